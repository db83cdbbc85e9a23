"""Which number format `precision = "auto"` may rightly pick on this CPU, judged by a measurement of
its own: the same matrix product as daemon/engine/precision.py's probe, timed by torch.utils.benchmark, so a
probe that timed the wrong thing could not vouch for itself. And what a format does to the numbers
beam search reads: the next-token distributions along a known text, compared with fp32's."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch.utils import benchmark
from whisper.model import TextDecoder, Whisper
from whisper.tokenizer import get_tokenizer

from daemon.engine import precision
from daemon.engine.decoder import Decoder

NOISE = 2.0  # two timings of one product on a busy 2-core machine can differ this much
HALVES = ("bf16", "fp16")


def matmul_seconds() -> dict[str, float]:
    """Median seconds per PROBE_SIZE² product in each format on this CPU."""
    seconds = {}
    for name, dtype in precision.DTYPES.items():
        a = torch.randn(precision.PROBE_SIZE, precision.PROBE_SIZE).to(dtype)
        timer = benchmark.Timer("torch.mm(a, a)", globals={"torch": torch, "a": a})
        seconds[name] = timer.blocked_autorange(min_run_time=0.5).median
    return seconds


def right_choices(seconds: Mapping[str, float], noise: float = NOISE) -> set[str]:
    """The formats precision.py's rule allows for these timings when each may be off by `noise`×:
    a half format that may be the faster half and may keep up with fp32 (within KEEPS_UP), and fp32
    if the faster half may not keep up. With noise 1 that is exactly the rule's answer (both on a tie)."""
    fp32, best_half = seconds["fp32"], min(seconds[h] for h in HALVES)
    keeps_up = precision.KEEPS_UP * fp32
    choices = {h for h in HALVES if seconds[h] <= noise * best_half and seconds[h] <= noise * keeps_up}
    return choices | ({"fp32"} if noise * best_half >= keeps_up else set())


def next_token_logprobs(model: Whisper, mel: torch.Tensor, language: str, text: str,
                        text_decoder: TextDecoder | None = None) -> torch.Tensor:
    """Log-probabilities of the next token at each position of `text` read by the model as the
    transcript of `mel` (one window, N_FRAMES), through our decoder (teacher forcing; `text_decoder`:
    the model's decoder in another format, as precision.text_decoder gives it):
    (positions, vocabulary), the first position predicting the text's first token."""
    tokenizer = get_tokenizer(model.is_multilingual, num_languages=model.num_languages, language=language,
                              task="transcribe")
    sot = list(tokenizer.sot_sequence_including_notimestamps)
    tokens = [*sot, *tokenizer.encode(text.strip())]
    with torch.inference_mode():
        audio = model.encoder(mel[None].to(model.encoder.conv1.weight.dtype))
        cross = model.decoder.blocks[0].cross_attn
        assert cross is not None
        audio = audio.to(cross.key.weight.dtype)  # an int8 decoder's audio keys are in its model's format
        decoder = Decoder(model, tokenizer, text_decoder)
        _, layers = decoder._layers(audio, 1, len(tokens))
        hidden = decoder._hidden(torch.tensor([tokens], device=audio.device), layers, 0, 1)
        return F.log_softmax(decoder._logits(hidden[0, len(sot) - 1:-1]).float(), -1)


def divergence(reference: torch.Tensor, other: torch.Tensor) -> tuple[int, float]:
    """(positions whose likeliest token differs, summed KL(reference ‖ other)) of two
    next_token_logprobs of the same text."""
    changed = int((reference.argmax(-1) != other.argmax(-1)).sum())
    return changed, float((reference.exp() * (reference - other)).sum())
