"""The first file after a start (issue 25, lever 1): a 3-second memo, whole process, ours vs faster-whisper.

Each side is a whole process on a warm file cache, as bench/compare.py runs them (compare.run_engine:
ours is `work --exit-when-empty` at its defaults, faster-whisper its defaults with int8), in pairs of
alternating order; the ratio ours / faster-whisper per pair and its median. From our worker's log:
how long after the process started it was ready to decode ("worker ready … s after the process
started"). First, one start of ours with no remembered start-up checks (cache_dir/checks.json
removed: what the first start on a machine pays), not counted in the pairs.

    .venv/bin/python bench/startup.py [--models tiny.en base] [--repeat 4]
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
from pathlib import Path
from typing import Any

import common
from compare import run_engine
from peers import Weights, prepare

from daemon.engine.remembered import FILE_NAME

MEMO_MINUTES = 0.05  # a 3-second meeting of one sentence
TARGETS = {"ready_seconds": 1.5, "ratio": 2.0}
READY = re.compile(r"worker ready .* ([0-9.]+) s after the process started")


def ours(audio: Path, w: Weights) -> tuple[float, float]:
    """Wall seconds of the whole process, and seconds from its start to ready."""
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        m, _, _ = run_engine("ours", [audio], w, Path(tmp))
        ready = READY.search((Path(tmp) / "log" / "worker.log").read_text())
    assert ready, "no 'worker ready' line"
    return m.wall_seconds, float(ready.group(1))


def faster(audio: Path, w: Weights) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-startup-fw-") as tmp:
        m, _, _ = run_engine("faster", [audio], w, Path(tmp))
    return m.wall_seconds


def measure(model: str, repeat: int) -> dict[str, Any]:
    audio, _ = common.recording(MEMO_MINUTES, 0)
    common.warm_file_cache(audio)
    w = prepare(model, ["ours", "faster"])
    (common.CACHE_DIR / FILE_NAME).unlink(missing_ok=True)
    first_wall, first_ready = ours(audio, w)
    print(f"  {model}: first start, checks not remembered: {first_wall:.2f} s, ready after {first_ready:.2f} s")
    pairs = []
    for i in range(repeat):
        order = ["ours", "faster"] if i % 2 == 0 else ["faster", "ours"]
        got: dict[str, Any] = {side: ours(audio, w) if side == "ours" else faster(audio, w) for side in order}
        (wall, ready), fw = got["ours"], got["faster"]
        pairs.append({"ours_s": wall, "ready_s": ready, "faster_s": fw, "ratio": wall / fw})
        print(f"  {model} pair {i + 1} ({' then '.join(order)}): ours {wall:.2f} s (ready after {ready:.2f} s), "
              f"faster-whisper {fw:.2f} s, ratio {wall / fw:.2f}")
    ratio = statistics.median(p["ratio"] for p in pairs)
    ready = statistics.median(p["ready_s"] for p in pairs)
    print(f"{model}: 3-s memo, ours / faster-whisper {ratio:.2f} (median of {repeat} pairs; target <= "
          f"{TARGETS['ratio']:g}); ready {ready:.2f} s after start (target <= {TARGETS['ready_seconds']:g} s)")
    return {"first_start": {"wall_s": first_wall, "ready_s": first_ready}, "pairs": pairs, "ratio": ratio,
            "ready_s": ready}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--repeat", type=int, default=4)
    args = parser.parse_args()
    data: dict[str, Any] = {"machine": common.machine()}
    for model in args.models:
        data[model] = measure(model, args.repeat)
    print(common.write_result("startup", data))


if __name__ == "__main__":
    main()
