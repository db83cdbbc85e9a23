"""Our decoder picks the same tokens as openai-whisper's DecodingTask (real tiny.en, real speech).

In fp32 the two do the same arithmetic in a different order, so the tokens must be identical and
the scores equal to rounding. The half-precision model (bf16 weights, int8 output projection) is
held to the transcript instead.
"""

from __future__ import annotations

import copy

import pytest
import torch
import whisper
from whisper.audio import N_FRAMES, N_SAMPLES, log_mel_spectrogram, pad_or_trim
from whisper.decoding import DecodingOptions
from whisper.model import Whisper
from whisper.tokenizer import get_tokenizer

from daemon.engine import precision
from daemon.engine.decoder import Decoder
from tests.speech import compose, sentences, wer

pytestmark = pytest.mark.slow
WINDOWS = 3


@pytest.fixture(scope="module")
def speech() -> tuple[list[torch.Tensor], str]:
    """Log-mel 30 s windows of 14 spoken sentences (the last window short and padded), and their text."""
    recording = compose(sentences()[:14])
    audio = recording.audio[: WINDOWS * N_SAMPLES]
    mels = [pad_or_trim(log_mel_spectrogram(audio[i:i + N_SAMPLES], padding=N_SAMPLES)[:, :N_FRAMES], N_FRAMES)
            for i in range(0, len(audio), N_SAMPLES)]
    return mels, recording.text


def decoder_for(model: Whisper) -> Decoder:
    return Decoder(model, get_tokenizer(model.is_multilingual, language="en", task="transcribe"))


def encode(model: Whisper, mels: list[torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        return model.encoder(torch.stack(mels).to(model.encoder.conv1.weight.dtype))


@pytest.mark.parametrize(("temperature", "beam_size"), [(0.0, None), (0.0, 3), (0.7, None)])
def test_same_tokens_as_whisper(fp32_model: Whisper, speech: tuple[list[torch.Tensor], str],
                                temperature: float, beam_size: int | None) -> None:
    mels, _ = speech
    decoder = decoder_for(fp32_model)
    prompt: list[int] = []
    for mel in mels:  # each window with the text so far as its prompt, as the engine runs them
        options = DecodingOptions(language="en", fp16=False, temperature=temperature, beam_size=beam_size,
                                  prompt=prompt or None)
        torch.manual_seed(1)
        theirs = whisper.decode(fp32_model, mel, options)
        torch.manual_seed(1)
        ours = decoder.run(encode(fp32_model, [mel]), prompt, temperature, beam_size)[0]
        assert ours.tokens == theirs.tokens
        assert ours.text == theirs.text
        assert ours.avg_logprob == pytest.approx(theirs.avg_logprob, abs=1e-4)
        assert ours.no_speech_prob == pytest.approx(theirs.no_speech_prob, abs=1e-4)
        assert ours.compression_ratio == pytest.approx(theirs.compression_ratio)
        prompt = (prompt + theirs.tokens)[-(fp32_model.dims.n_text_ctx // 2 - 1):]


def test_windows_decoded_together_match_alone(fp32_model: Whisper, speech: tuple[list[torch.Tensor], str]) -> None:
    mels, _ = speech
    decoder = decoder_for(fp32_model)
    together = decoder.run(encode(fp32_model, mels), [], 0.0, 2)
    alone = [decoder.run(encode(fp32_model, [mel]), [], 0.0, 2)[0] for mel in mels]
    assert [r.tokens for r in together] == [r.tokens for r in alone]


def test_half_precision_decodes_the_same_words(fp32_model: Whisper, speech: tuple[list[torch.Tensor], str]) -> None:
    mels, _ = speech
    half = precision.convert(copy.deepcopy(fp32_model), "bf16")
    assert isinstance(half.decoder.token_embedding, precision.Int8Embedding)
    texts = {}
    for name, model in (("fp32", fp32_model), ("bf16", half)):
        decoder = decoder_for(model)
        texts[name] = " ".join(decoder.run(encode(model, [mel]), [], 0.0, 2)[0].text for mel in mels)
    # Plain 30 s windows cut sentences in half (the engine's seek loop does not), so the two are
    # held to each other; tests/test_precision.py holds whole transcripts to the script.
    assert texts["fp32"]
    assert wer(texts["fp32"], texts["bf16"]) <= 0.05


def test_int8_embedding_stays_close_to_the_weights(fp32_model: Whisper) -> None:
    weight = fp32_model.decoder.token_embedding.weight.detach()
    embedding = precision.Int8Embedding(weight.to(torch.bfloat16))
    step = embedding.scales.float()[:, None]  # one quantization step per row
    bf16_rounding = weight.abs() / 64  # the scales and the dequantized rows are bf16 too
    assert (embedding.weight.float() - weight).abs().le(step / 2 + bf16_rounding).all()
    tokens = torch.tensor([[0, 50256, 50363]])
    assert torch.equal(embedding(tokens), embedding.weight[tokens])
    # Random states, not the decoder's: their logits are small and close together, so this only
    # bounds the error (~6% of the largest logit, against ~0.4% for bf16); the transcripts above
    # and the benchmarks measure what it does to the words.
    torch.manual_seed(0)
    hidden = torch.randn(3, weight.shape[1]).to(torch.bfloat16)
    exact = hidden.float() @ weight.T
    assert (embedding.logits(hidden) - exact).abs().max() <= 0.1 * exact.abs().max()


def test_positions_run_after_cached_ones_see_what_one_run_would(fp32_model: Whisper,
                                                               speech: tuple[list[torch.Tensor], str]) -> None:
    """Decoder.punctuate runs the text after each mark it adds as one sequence behind cached
    positions: each position must attend to the cache and to the positions before it, no further."""
    decoder = decoder_for(fp32_model)
    features = encode(fp32_model, speech[0][:1])
    sequence = torch.tensor([[*decoder.initial_tokens([]), *decoder.run(features, [], 0.0, None)[0].tokens]])

    def hidden(cuts: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            _, layers = decoder._layers(features, 1, decoder.n_ctx)
            return torch.cat([decoder._hidden(sequence[:, a:b], layers, a, 1) for a, b in zip(cuts, cuts[1:])], 1)

    length = sequence.shape[1]
    assert length > 40
    torch.testing.assert_close(hidden([0, 5, 6, 30, length]), hidden([0, length]), atol=1e-4, rtol=1e-4)
