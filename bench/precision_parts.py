"""Where a number format costs accuracy, part by part, and what each part's format costs in time.

In one process (the model loaded once), on the real clips of realspeech.py: every clip's reference
text is run through the decoder as a prompt (teacher forcing), and each position's next-token
distribution is compared with fp32's: the share of positions where the likeliest token differs
(top-1 changed) and the mean KL divergence from fp32's distribution. No decoding, no search: what
one part's format does to the numbers that beam search reads, per language.

Variants: whole resolved formats as `precision.convert` makes them, and fp32 models with one part
in int8 (a group of decoder projections, the output projection, the encoder's projections), so the
part that costs Mandarin shows. Times: one 30-s window through the encoder in each format, and a
decoding step's output projection (5 rows), A/B in turns in this process (fastest of N tries).

    .venv/bin/python bench/precision_parts.py [--model base] [--variants ...] [--clips 0] [--skip-times]
        [--times encoder logits step] [--threads 0]
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import common
import torch
import torch.nn.functional as F
from realspeech import clips
from whisper.audio import N_FRAMES, log_mel_spectrogram, pad_or_trim
from whisper.model import Whisper
from whisper.tokenizer import get_tokenizer

from daemon.engine import precision
from daemon.engine.decoder import Decoder
from daemon.engine.weights import load_model
from tests.formats import divergence, next_token_logprobs
from tests.speech import read_audio

GROUPS = {  # the decoder's projections, by role
    "self_qkv": lambda b: [(b.attn, n) for n in ("query", "key", "value")],
    "self_out": lambda b: [(b.attn, "out")],
    "cross_q": lambda b: [(b.cross_attn, "query")],
    "cross_out": lambda b: [(b.cross_attn, "out")],
    "fc1": lambda b: [(b.mlp, "0")],
    "fc2": lambda b: [(b.mlp, "2")],
}


def int8_group(model: Whisper, group: str) -> Whisper:
    """`model` (fp32) with one group of decoder projections in int8."""
    for block in model.decoder.blocks:
        for parent, name in GROUPS[group](block):
            linear = getattr(parent, name)
            setattr(parent, name, precision.Int8Linear(*precision.int8_rows(linear.weight), linear.bias))
    return model


def int8_logits(model: Whisper, dynamic: bool) -> Whisper:
    """`model` (fp32) with its output projection in int8: dynamic (int8 products) or weight-only."""
    weight = model.decoder.token_embedding.weight.detach()
    model.decoder.token_embedding = precision.Int8Embedding(weight, torch.float32, int8_logits=dynamic)  # type: ignore[assignment]
    return model


def int8_encoder(encoder: torch.nn.Module, fc2: bool = True) -> torch.nn.Module:
    """`encoder` with its blocks' projections (attention and MLP; without `fc2`, not the MLP's second,
    as in the int8 decoder) as Int8Linears made from their weights; the convolutions stay (issue 25's
    lever 3, measured here, not built into `auto`)."""
    for block in encoder.blocks:
        for name in ("query", "key", "value", "out"):
            linear = getattr(block.attn, name)
            setattr(block.attn, name, precision.Int8Linear(*precision.int8_rows(linear.weight), linear.bias))
        for i in (0, 2) if fc2 else (0,):
            block.mlp[i] = precision.Int8Linear(*precision.int8_rows(block.mlp[i].weight), block.mlp[i].bias)
    return encoder


def fc2_int8(model: Whisper) -> Whisper:
    """`model` (fp32) with its decoder's MLP's second projection in int8: with convert(…, "int8+…")
    after it, an int8 decoder as it was before issue 25."""
    for block in model.decoder.blocks:
        block.mlp[2] = precision.Int8Linear(*precision.int8_rows(block.mlp[2].weight), block.mlp[2].bias)
    return model


def bf16_encoder(encoder: torch.nn.Module) -> torch.nn.Module:
    encoder.to(torch.bfloat16)
    for module in encoder.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.float()
    return encoder


def variants(fp32: Whisper) -> dict[str, Callable[[], Whisper]]:
    def copied(f: Callable[[Whisper], Whisper]) -> Callable[[], Whisper]:
        return lambda: f(copy.deepcopy(fp32))

    made: dict[str, Callable[[], Whisper]] = {
        "bf16": copied(lambda m: precision.convert(m, "bf16")),
        "int8+bf16": copied(lambda m: precision.convert(m, "int8+bf16")),
        "int8+fp32": copied(lambda m: precision.convert(m, "int8+fp32")),
        "logits_int8_dynamic": copied(lambda m: int8_logits(m, True)),
        "logits_int8_weights": copied(lambda m: int8_logits(m, False)),
        "int8+bf16, fc2 int8 (before)": copied(lambda m: precision.convert(fc2_int8(m), "int8+bf16")),
    }
    made["encoder_bf16"] = copied(lambda m: setattr(m, "encoder", bf16_encoder(m.encoder)) or m)
    made["encoder_int8"] = copied(lambda m: setattr(m, "encoder", int8_encoder(m.encoder)) or m)
    made["encoder_int8_but_fc2"] = copied(lambda m: setattr(m, "encoder", int8_encoder(m.encoder, fc2=False)) or m)
    made |= {f"{group}_int8": copied(lambda m, g=group: int8_group(m, g)) for group in GROUPS}  # type: ignore[misc]
    return made


def fastest(products: dict[str, Callable[[], object]], tries: int) -> dict[str, float]:
    return precision.fastest_tries(products, tries)


def encoder_times(fp32: Whisper, tries: int) -> dict[str, float]:
    """Seconds of one 30-s window through the encoder: fp32, bf16, int8 projections (the rest fp32 or
    bf16), and all but the MLP's second projection in int8."""
    mel = torch.randn(1, fp32.dims.n_mels, N_FRAMES)
    encoders = {"fp32": copy.deepcopy(fp32.encoder), "bf16": copy.deepcopy(fp32.encoder).to(torch.bfloat16)}
    encoders["int8+fp32"] = int8_encoder(copy.deepcopy(fp32.encoder))
    encoders["int8+bf16"] = int8_encoder(copy.deepcopy(fp32.encoder)).to(torch.bfloat16)
    encoders["int8+fp32, fc2 fp32"] = int8_encoder(copy.deepcopy(fp32.encoder), fc2=False)
    encoders["int8+bf16, fc2 bf16"] = int8_encoder(copy.deepcopy(fp32.encoder), fc2=False).to(torch.bfloat16)
    for encoder in encoders.values():
        for module in encoder.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.float()

    def run(encoder: torch.nn.Module) -> Callable[[], object]:
        dtype = encoder.conv1.weight.dtype

        def go() -> object:
            with torch.inference_mode():
                return encoder(mel.to(dtype))
        return go

    return fastest({name: run(e) for name, e in encoders.items()}, tries)


def logits_times(fp32: Whisper, tries: int) -> dict[str, float]:
    """Seconds of a decoding step's output projection (5 rows) in each way."""
    weight = fp32.decoder.token_embedding.weight.detach()
    hidden = torch.randn(5, weight.shape[1])
    dynamic = precision.Int8Embedding(weight, torch.float32, int8_logits=True)
    weights_fp32 = precision.Int8Embedding(weight, torch.float32)
    weights_bf16 = precision.Int8Embedding(weight, torch.bfloat16)
    return fastest({"int8 dynamic": lambda: dynamic.logits(hidden),
                    "int8 weights, fp32 rows": lambda: weights_fp32.logits(hidden),
                    "int8 weights, bf16 rows": lambda: weights_bf16.logits(hidden),
                    "fp32": lambda: F.linear(hidden, weight)}, tries)


def step_times(fp32: Whisper, tries: int) -> dict[str, float]:
    """Seconds of one decoding step of 5 beams (the decoder's blocks and the output projection) at
    position 100 of a window, each resolved format's decoder over the same encoded audio."""
    tokenizer = get_tokenizer(True, num_languages=fp32.num_languages, language="zh", task="transcribe")
    models = {"bf16": precision.convert(copy.deepcopy(fp32), "bf16"),
              "int8+bf16, fc2 int8 (before)": precision.convert(fc2_int8(copy.deepcopy(fp32)), "int8+bf16"),
              "int8+bf16": precision.convert(copy.deepcopy(fp32), "int8+bf16")}
    audio = torch.randn(1, fp32.dims.n_audio_ctx, fp32.dims.n_audio_state)
    tokens = torch.randint(0, 1000, (5, 1))

    def step(model: Whisper) -> Callable[[], object]:
        decoder = Decoder(model, tokenizer)
        _, layers = decoder._layers(audio.to(model.decoder.blocks[0].cross_attn.key.weight.dtype), 5, 101)

        def go() -> object:
            with torch.inference_mode():
                return decoder._logits(decoder._hidden(tokens, layers, 100, 5)[:, -1])
        return go

    return fastest({name: step(m) for name, m in models.items()}, tries)


TIMES = {"encoder": ("encoder, one 30-s window", encoder_times), "logits": ("output projection, 5 rows", logits_times),
         "step": ("decoding step, 5 beams", step_times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="base")
    parser.add_argument("--variants", nargs="*", help="default: all")
    parser.add_argument("--clips", type=int, default=0, help="at most this many clips a language (0: all)")
    parser.add_argument("--skip-times", action="store_true")
    parser.add_argument("--times", nargs="+", choices=list(TIMES), default=list(TIMES), help="which times (default: all)")
    parser.add_argument("--tries", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core, as the worker)")
    args = parser.parse_args()
    precision.use_threads(args.threads)
    fp32, _ = load_model(args.model, common.MODEL_CACHE)
    machine = common.machine()
    made = variants(fp32)
    names = args.variants or list(made)
    data: dict[str, object] = {"model": args.model, "machine": machine}
    if args.variants != []:
        by_language = {lang: clips(lang)[:args.clips or None] for lang in ("en", "zh")}
        inputs = {lang: [(pad_or_trim(log_mel_spectrogram(read_audio(c), fp32.dims.n_mels), N_FRAMES),
                          c.with_suffix(".txt").read_text(encoding="utf-8")) for c in cs]
                  for lang, cs in by_language.items()}
        reference = {lang: [next_token_logprobs(fp32, mel, lang, text) for mel, text in items]
                     for lang, items in inputs.items()}
        rows, scores = [], {}
        for name in names:
            model = made[name]()
            row: list[object] = [name]
            for lang, items in inputs.items():
                totals = [divergence(ref, next_token_logprobs(model, mel, lang, text))
                          for ref, (mel, text) in zip(reference[lang], items)]
                changed, kl = (sum(t[i] for t in totals) for i in range(2))
                positions = sum(len(ref) for ref in reference[lang])
                scores[f"{name}/{lang}"] = {"changed": changed, "kl": kl / positions, "positions": positions}
                row += [f"{changed} of {positions} ({changed / positions:.2%})", f"{kl / positions:.4f}"]
            rows.append(row)
            print(common.table(["variant", "en top-1 changed", "en KL", "zh top-1 changed", "zh KL"], rows[-1:]),
                  flush=True)
        print(common.table(["variant", "en top-1 changed", "en KL", "zh top-1 changed", "zh KL"], rows))
        data["teacher_forced"] = scores
    if not args.skip_times:
        threads = torch.get_num_threads()
        for what, measure in (TIMES[t] for t in args.times):
            seconds = measure(fp32, args.tries)
            base = next(iter(seconds.values()))
            print(f"{what} ({threads} threads, fastest of {args.tries}):")
            print(common.table(["format", "ms", "vs first"],
                               [[n, f"{s * 1e3:.2f}", f"{s / base:.2f}x"] for n, s in seconds.items()]))
            data[what] = seconds
    print(f"wrote {common.write_result('precision_parts', data).relative_to(common.REPO)}")


if __name__ == "__main__":
    main()
