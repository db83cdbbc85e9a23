"""A backlog inside one worker (issue 25, lever 2): two jobs decoded at once on one copy of the weights?

On 2 cores, two single-threaded worker processes drained a backlog in 0.73x the time of one
two-threaded worker (bench/shared_queue.py), at the cost of a second copy of the model. This
measures the same split inside one process: the model loaded and converted once (as the worker
does, `precision = auto`), then --files meetings of --minutes each transcribed
  A. one after another, torch on two threads (today's worker);
  B. by two Python threads at once, each with its own Engine (its own VAD state and decoders) on
     the shared model, torch on one thread each;
in alternating order over --repeat pairs. Prints each side's wall time, the ratio B/A per pair and
its median, and whether B's transcripts equal A's.

    .venv/bin/python bench/backlog_threads.py [--model tiny.en] [--files 4] [--minutes 1] [--repeat 2]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path

import common
import torch

from daemon.engine import precision
from daemon.engine.transcribe import DecodeSettings, Engine
from daemon.engine.weights import load_model


def transcribe(engine: Engine, path: Path) -> str:
    return " ".join(s.text for w in engine.windows(path) for s in w.segments)


def sequential(model: torch.nn.Module, settings: DecodeSettings, files: list[Path]) -> tuple[float, list[str]]:
    torch.set_num_threads(2)
    engine = Engine(model, settings)
    began = time.monotonic()
    texts = [transcribe(engine, f) for f in files]
    return time.monotonic() - began, texts


def two_threads(model: torch.nn.Module, settings: DecodeSettings, files: list[Path]) -> tuple[float, list[str]]:
    torch.set_num_threads(1)  # one core each: the two Python threads run side by side
    texts: dict[int, str] = {}
    engines = [Engine(model, settings) for _ in range(2)]

    def drain(n: int) -> None:
        for i in range(n, len(files), 2):
            texts[i] = transcribe(engines[n], files[i])

    began = time.monotonic()
    threads = [threading.Thread(target=drain, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - began, [texts[i] for i in range(len(files))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    files = [common.recording(args.minutes, seed)[0] for seed in range(args.files)]
    model, _ = load_model(args.model, common.CACHE_DIR / "models")
    chosen = precision.choose("auto", "cpu")
    model = precision.convert(model, chosen)
    settings = DecodeSettings(language="en" if args.model.endswith(".en") else None)
    sequential(model, settings, files[:1])  # warm-up: kernels, VAD, tokenizer
    ratios = []
    for i in range(args.repeat):
        order = ["A", "B"] if i % 2 == 0 else ["B", "A"]
        runs = {side: (sequential if side == "A" else two_threads)(model, settings, files) for side in order}
        (a, a_texts), (b, b_texts) = runs["A"], runs["B"]
        ratios.append(b / a)
        print(f"pair {i + 1} ({' '.join(order)}): one after another {a:.1f} s, two threads {b:.1f} s, "
              f"ratio {b / a:.3f}; same text: {a_texts == b_texts}", flush=True)
    print(f"{args.model} ({chosen}), {args.files} x {args.minutes:g} min: two jobs at once / one after another = "
          f"{statistics.median(ratios):.3f} (median of {len(ratios)}); CPU {common.machine()['cpu_model']}")


if __name__ == "__main__":
    main()
