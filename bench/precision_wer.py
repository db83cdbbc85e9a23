"""Accuracy of the resident half-precision model: WER and time of the engine in fp32 vs `auto`.

Same engine, same decoding settings (the daemon's defaults), same 5-minute meeting, one process.
Target (issue 5): the half-precision WER within 0.5 points of fp32's, and no slower.

    .venv/bin/python bench/precision_wer.py [--models tiny.en base] [--minutes 5]
"""

from __future__ import annotations

import argparse
import copy
import time

import common

from daemon.engine import precision
from daemon.engine.transcribe import Engine
from daemon.engine.weights import load_model

TARGET_POINTS = 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--minutes", type=float, default=5)
    args = parser.parse_args()
    precision.use_threads()  # as the worker does
    audio, reference = common.recording(args.minutes, seed=0)
    rows = []
    for name in args.models:
        fp32, _ = load_model(name, common.MODEL_CACHE)
        half_name = precision.choose("auto", "cpu")
        results = {}
        for label, model in (("fp32", fp32), (half_name, precision.convert(copy.deepcopy(fp32), half_name))):
            began = time.perf_counter()
            text = " ".join(s.text for w in Engine(model).windows(audio) for s in w.segments)
            results[label] = (common.wer(reference, text), time.perf_counter() - began)
        (full_wer, full_s), (half_wer, half_s) = results["fp32"], results[half_name]
        points = (half_wer - full_wer) * 100
        verdict = "PASS" if points <= TARGET_POINTS and half_s <= full_s else "FAIL"
        rows.append([name, common.pct(full_wer), f"{full_s:.1f}", half_name, common.pct(half_wer), f"{half_s:.1f}",
                     f"{points:+.2f}", f"{half_s / full_s:.2f}x", verdict])
    print(f"{audio.name}, engine in one process, daemon defaults")
    print(common.table(["model", "fp32 WER", "fp32 s", "half", "half WER", "half s", "WER points",
                        "time half/fp32", f"<= +{TARGET_POINTS} pt, not slower"], rows))


if __name__ == "__main__":
    main()
