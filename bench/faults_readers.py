"""Fault suite, row 2 at full load: 20 `sqlite3 -readonly` sessions and one-shot `sqlite3` pollers
query `jobs` every 50 ms while `run` transcribes a recording with the real model.

Reports "database is locked" in the readers and the daemon's logs (target: none) and the largest
the WAL file grew.

    .venv/bin/python bench/faults_readers.py [--sessions 20] [--oneshots 4] [--minutes 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import common

from tests.faults import readers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--oneshots", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--model", default="tiny.en")
    args = parser.parse_args()
    machine = common.machine()
    common.converted_checkpoint(args.model)
    with tempfile.TemporaryDirectory(prefix="bench-readers-") as tmp:
        report = readers(Path(tmp), common.daemon_env(Path(tmp), args.model), args.sessions, args.oneshots,
                         args.minutes * 60, deadline=args.minutes * 60 * 5 + 300)
    print(report.summary())
    verdict = "PASS" if (report.job["status"] == "done" and not report.reader_errors
                         and report.daemon_locked == 0) else "FAIL"
    print(f"no lock errors, job done: {verdict}")
    path = common.write_result("faults_readers", {"params": vars(args), "machine": machine, "verdict": verdict,
                                                  "results": dataclasses.asdict(report)})
    print(f"wrote {path.relative_to(common.REPO)}")


if __name__ == "__main__":
    main()
