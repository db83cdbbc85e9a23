"""Accuracy and time of resolved number formats: the engine in one process, model loaded once.

Each variant is the fp32 model converted as the worker would (`precision.convert`), optionally with
the encoder's projections in int8 (`+encoder-int8`, issue 25's lever 3; `+encoder-int8-but-fc2`: all
but its MLP's second projection), or with Mandarin read by the int8 decoder too, as before issue
25's lever 4 (`+int8-for-all`). On the same audio, with the daemon's default decoding: WER on a
synthetic meeting (tests.speech.meeting) and on the real English clips, CER on the real Mandarin
clips (bench/realspeech.py's clips and scoring rules), the seconds each variant took and the share
of them its encoder took, its runs taken in turns (A B C, then C B A with --repeat 2), so a machine
that slows down mid-run hits every variant alike. The CPU seconds the process used are printed too:
with --threads 1 on a shared machine they leave out the time spent waiting for a core.

    .venv/bin/python bench/precision_wer.py [--model base] [--variants fp32 int8+bf16 ...] [--minutes 5]
        [--parts meeting en zh] [--repeat 1] [--threads 0]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import common
import torch
from precision_parts import fc2_int8, int8_encoder
from realspeech import clips

from daemon.engine import precision
from daemon.engine.transcribe import Engine
from daemon.engine.weights import load_model
from tests.speech import edit_distance, mandarin_characters, words

ENCODER_INT8 = "+encoder-int8"
ENCODER_INT8_BUT_FC2 = "+encoder-int8-but-fc2"  # the encoder's MLP's second projection stays, as the decoder's
FC2_INT8 = "+fc2-int8"  # an int8 decoder as before issue 25: the MLP's second projection in int8 too
INT8_FOR_ALL = "+int8-for-all"  # every language read by the int8 decoder (precision.IN_MODEL_FORMAT empty)


def build(fp32: torch.nn.Module, variant: str) -> torch.nn.Module:
    model = copy.deepcopy(fp32)
    name = (variant.removesuffix(INT8_FOR_ALL).removesuffix(FC2_INT8).removesuffix(ENCODER_INT8_BUT_FC2)
            .removesuffix(ENCODER_INT8))
    if ENCODER_INT8 in variant:  # from the fp32 weights, before convert sets the rest's format
        int8_encoder(model.encoder, fc2=ENCODER_INT8_BUT_FC2 not in variant)
    return precision.convert(fc2_int8(model) if FC2_INT8 in variant else model, name)


class EncoderClock:
    """Seconds a model's encoder spends (forward hooks), to show its share of the whole."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.seconds = 0.0
        self._began = 0.0
        model.encoder.register_forward_pre_hook(self._start)
        model.encoder.register_forward_hook(self._stop)

    def _start(self, *_: object) -> None:
        self._began = time.perf_counter()

    def _stop(self, *_: object) -> None:
        self.seconds += time.perf_counter() - self._began


def errors(language: str, reference: str, text: str) -> tuple[int, int]:
    if language == "zh":
        ref, hyp = mandarin_characters(reference), mandarin_characters(text)
    else:
        ref, hyp = words(reference), words(text)
    return edit_distance(ref, hyp), len(ref)


def transcribe(model: torch.nn.Module, path: Path, variant: str) -> str:
    kept = precision.IN_MODEL_FORMAT
    if INT8_FOR_ALL in variant:
        precision.IN_MODEL_FORMAT = frozenset()
    try:
        return " ".join(s.text for w in Engine(model).windows(path) for s in w.segments)
    finally:
        precision.IN_MODEL_FORMAT = kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="base")
    parser.add_argument("--variants", nargs="+", default=["fp32", "int8+bf16"])
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--parts", nargs="+", default=["meeting", "en", "zh"], choices=["meeting", "en", "zh"])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core, as the worker)")
    args = parser.parse_args()
    threads = precision.use_threads(args.threads)
    fp32, _ = load_model(args.model, common.MODEL_CACHE)
    models = {v: build(fp32, v) for v in args.variants}
    clocks = {v: EncoderClock(m) for v, m in models.items()}
    audio: dict[str, list[tuple[Path, str, str]]] = {}  # part: (path, language, reference)
    if "meeting" in args.parts:
        path, reference = common.recording(args.minutes, seed=0)
        audio["meeting"] = [(path, "en", reference)]
    for language in ("en", "zh"):
        if language in args.parts:
            audio[language] = [(c, language, c.with_suffix(".txt").read_text(encoding="utf-8")) for c in clips(language)]
    seconds: dict[tuple[str, str], list[float]] = {}
    encoder: dict[tuple[str, str], list[float]] = {}  # of those seconds, the encoder's
    cpu: dict[tuple[str, str], list[float]] = {}
    scores: dict[tuple[str, str], tuple[int, int]] = {}
    for repeat in range(args.repeat):
        order = args.variants if repeat % 2 == 0 else args.variants[::-1]
        for part, items in audio.items():
            for variant in order:
                began, began_cpu, encoding = time.perf_counter(), time.process_time(), clocks[variant].seconds
                texts = [transcribe(models[variant], path, variant) for path, _, _ in items]
                seconds.setdefault((variant, part), []).append(time.perf_counter() - began)
                cpu.setdefault((variant, part), []).append(time.process_time() - began_cpu)
                encoder.setdefault((variant, part), []).append(clocks[variant].seconds - encoding)
                counts = [errors(language, reference, text) for (_, language, reference), text in zip(items, texts)]
                scores[(variant, part)] = (sum(e for e, _ in counts), sum(n for _, n in counts))
                print(f"{variant} {part}: {scores[(variant, part)]} errors/reference, "
                      f"{seconds[(variant, part)][-1]:.1f} s (encoder {encoder[(variant, part)][-1]:.1f} s), "
                      f"{cpu[(variant, part)][-1]:.1f} s CPU", flush=True)
    first = args.variants[0]
    rows = []
    for variant in args.variants:
        row: list[object] = [variant]
        for part in audio:
            e, n = scores[(variant, part)]
            s = min(seconds[(variant, part)])
            share = encoder[(variant, part)][seconds[(variant, part)].index(s)] / s
            row += [f"{e / n:.2%} ({e})", f"{s:.1f}", f"{share:.0%}", f"{s / min(seconds[(first, part)]):.2f}x"]
        rows.append(row)
    header = ["variant"] + [h for part in audio
                            for h in (f"{part} error rate", f"{part} s", "encoder", f"{part} vs {first}")]
    print(f"model {args.model}, {threads} threads, engine defaults; fastest of {args.repeat} run(s) in turns")
    print(common.table(header, rows))
    common.write_result("precision_wer", {
        "model": args.model, "machine": common.machine(),
        "results": {f"{v}/{p}": {"errors": scores[(v, p)][0], "reference": scores[(v, p)][1],
                                 "seconds": seconds[(v, p)], "encoder_seconds": encoder[(v, p)],
                                 "cpu_seconds": cpu[(v, p)]} for v, p in scores}})


if __name__ == "__main__":
    main()
