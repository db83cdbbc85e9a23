"""Decoder speed: milliseconds per token, our Decoder vs openai-whisper's DecodingTask, same windows.

Both decode the same encoded 30 s windows of a meeting, in the same process, with the same
prompt carried from window to window. whisper's DecodingTask only knows fp32 (and fp16 on GPUs),
so it runs the fp32 model; ours runs both the fp32 model and the resident half-precision one.
Tokens are compared too: in fp32 they must be identical.

    .venv/bin/python bench/decoder_speed.py [--model tiny.en] [--windows 6] [--beam-size 2]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import common
import torch
import whisper
from whisper.audio import N_FRAMES, N_SAMPLES, log_mel_spectrogram, pad_or_trim
from whisper.decoding import DecodingOptions
from whisper.tokenizer import get_tokenizer

from daemon.engine import precision
from daemon.engine.audio import stream_audio
from daemon.engine.decoder import Decoder
from daemon.engine.weights import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--windows", type=int, default=6)
    parser.add_argument("--beam-size", type=int, default=2, help="1: greedy")
    args = parser.parse_args()
    beam = args.beam_size if args.beam_size > 1 else None

    precision.use_threads()  # as the worker does
    audio_path, _ = common.recording(5, seed=0)
    pieces = [p for _, p in zip(range(args.windows), stream_audio(audio_path, N_SAMPLES))]
    fp32, _ = load_model(args.model, common.MODEL_CACHE)
    half = precision.convert(copy.deepcopy(fp32), precision.choose("auto", "cpu"))
    tokenizer = get_tokenizer(fp32.is_multilingual, num_languages=fp32.num_languages, language="en", task="transcribe")
    mels = [pad_or_trim(log_mel_spectrogram(p, fp32.dims.n_mels, padding=N_SAMPLES)[:, :N_FRAMES], N_FRAMES)
            for p in pieces]

    def whisper_decode(mel: torch.Tensor, prompt: list[int]) -> list[int]:
        options = DecodingOptions(language="en", fp16=False, beam_size=beam, prompt=prompt or None)
        return whisper.decode(fp32, mel, options).tokens

    def ours(model: torch.nn.Module) -> object:
        decoder = Decoder(model, tokenizer)

        def run(mel: torch.Tensor, prompt: list[int]) -> list[int]:
            with torch.inference_mode():
                features = model.encoder(mel[None].to(model.encoder.conv1.weight.dtype))
            return decoder.run(features, prompt, 0.0, beam)[0].tokens
        return run

    runs = {"openai-whisper DecodingTask, fp32": whisper_decode, "ours, fp32": ours(fp32),
            f"ours, resident {half.decoder.blocks[0].attn.query.weight.dtype} + int8 projection": ours(half)}
    outputs: dict[str, list[list[int]]] = {}
    timings: dict[str, float] = {}
    max_prompt = fp32.dims.n_text_ctx // 2 - 1  # what both decoders keep of a prompt
    for name, run in runs.items():
        run(mels[0], [])  # warm up kernels
        prompt: list[int] = []
        tokens: list[list[int]] = []
        began = time.perf_counter()
        for mel in mels:
            out = run(mel, prompt)  # type: ignore[operator]
            tokens.append(out)
            prompt = (prompt + out)[-max_prompt:]
        timings[name] = time.perf_counter() - began
        outputs[name] = tokens

    baseline = "openai-whisper DecodingTask, fp32"
    print(f"{args.model}, {len(mels)} windows of {audio_path.name}, beam {beam or 'greedy'}, "
          f"{torch.get_num_threads()} threads (encoder included in every row)")
    print(f"{'decoder':<58} {'tokens':>6} {'s':>6} {'ms/token':>8} {'vs whisper':>10}")
    for name, seconds in timings.items():
        n = sum(map(len, outputs[name]))
        print(f"{name:<58} {n:>6} {seconds:>6.2f} {seconds / n * 1e3:>8.2f} {seconds / timings[baseline]:>9.2f}x")
    same = outputs["ours, fp32"] == outputs[baseline]
    print(f"fp32 tokens identical to whisper's: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
