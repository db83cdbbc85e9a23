"""A backlog drained by one worker process: two jobs at once (the default) against one at a time.

Issue 25, lever 2. --files meetings of --minutes each are queued, then drained by
`python -m daemon work --exit-when-empty`, a whole process timed from start to exit as
bench/compare.py times it, with `concurrency` 1 (one job at a time on every torch thread, as
before) and 2 (two jobs at once on one copy of the model, the threads shared), in alternating
order over --repeat pairs. Prints each side's wall time and peak RSS, the ratio two / one per pair
and its median, and whether each file's transcript is the same on both sides.

    .venv/bin/python bench/backlog.py [--model tiny.en] [--files 4] [--minutes 1] [--repeat 2]
        [--precision auto]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import common


def drain(files: list[Path], model: str, concurrency: int, precision: str) -> tuple[float, float, list[str]]:
    """Wall seconds and peak RSS (MB) of the worker process, and each file's transcript text."""
    with tempfile.TemporaryDirectory(prefix="backlog-") as tmp:
        runs = common.daemon_transcribe_all(files, model, Path(tmp), "en", settings={
            "WHISPER_DAEMON_CONCURRENCY": str(concurrency), "WHISPER_DAEMON_PRECISION": precision})
        texts = [common.srt_text(run.srt_path) for run in runs]
    m = runs[0].measurement
    return m.wall_seconds, m.peak_rss_mb, texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--precision", default="auto", help="the worker's precision setting (fp32: exact text)")
    args = parser.parse_args()
    files = [common.recording(args.minutes, seed)[0] for seed in range(args.files)]
    ratios, rss, same = [], {1: [], 2: []}, True
    for i in range(args.repeat):
        order = [1, 2] if i % 2 == 0 else [2, 1]
        runs = {n: drain(files, args.model, n, args.precision) for n in order}
        (one, one_rss, one_texts), (two, two_rss, two_texts) = runs[1], runs[2]
        ratios.append(two / one)
        rss[1].append(one_rss)
        rss[2].append(two_rss)
        differ = [f.name for f, a, b in zip(files, one_texts, two_texts, strict=True) if a != b]
        same = same and not differ
        print(f"pair {i + 1} (concurrency {' then '.join(map(str, order))}): one at a time {one:.1f} s "
              f"({one_rss:.0f} MB), two at once {two:.1f} s ({two_rss:.0f} MB), ratio {two / one:.3f}; "
              f"transcripts differ: {differ or 'none'}", flush=True)
    print(f"{args.model} (precision {args.precision}), {args.files} x {args.minutes:g} min, whole worker process: "
          f"two at once / one at a time = {statistics.median(ratios):.3f} (median of {len(ratios)}); peak RSS "
          f"{statistics.median(rss[2]):.0f} vs {statistics.median(rss[1]):.0f} MB; same transcripts: {same}; "
          f"CPU {common.machine()['cpu_model']}")


if __name__ == "__main__":
    main()
