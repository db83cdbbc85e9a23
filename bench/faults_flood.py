"""Fault suite, row 1 at full load: 1,000 recordings copied into the inbox at once plus 50 written
slowly while the watcher is busy with them (the real `watch` process, no worker).

Each must be queued exactly once and never before its last byte; reports the enqueue latency
(last write → job row, quiet period included) and the watcher's peak RSS.

    .venv/bin/python bench/faults_flood.py [--files 1000] [--slow 50] [--quiet 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import common

from tests.faults import flood


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--slow", type=int, default=50)
    parser.add_argument("--quiet", type=float, default=2.0, help="the watcher's quiet period (its default: 2 s)")
    args = parser.parse_args()
    machine = common.machine()
    with tempfile.TemporaryDirectory(prefix="bench-flood-") as tmp:
        report = flood(Path(tmp), common.daemon_env(Path(tmp), "tiny.en"), args.files, args.slow,
                       quiet_seconds=args.quiet)
    print(report.summary())
    verdict = "PASS" if (report.jobs == args.files + args.slow and report.jobs_per_path_max == 1
                         and not report.early and not report.missing) else "FAIL"
    print(f"each queued once, none early: {verdict}")
    figures = {k: v for k, v in dataclasses.asdict(report).items() if k != "latencies"}
    path = common.write_result("faults_flood", {
        "params": vars(args), "machine": machine, "verdict": verdict,
        "results": {**figures, "latency_p50_seconds": report.p50, "latency_p99_seconds": report.p99,
                    "latency_max_seconds": max(report.latencies)},
    })
    print(f"wrote {path.relative_to(common.REPO)}")


if __name__ == "__main__":
    main()
