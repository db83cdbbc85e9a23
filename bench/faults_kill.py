"""Fault suite, row 3 at full load: SIGKILL the worker and/or the watcher at 20 random moments
while a batch arrives and is transcribed, restarting them at once.

Afterwards every file must have exactly one job, done (or duplicate), one SRT each that parses,
no temp file in the outbox, and `PRAGMA integrity_check` ok.

    .venv/bin/python bench/faults_kill.py [--files 12] [--kills 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import common

from tests.faults import kill_batch, kill_loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=12)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="tiny.en")
    args = parser.parse_args()
    machine = common.machine()
    common.converted_checkpoint(args.model)
    with tempfile.TemporaryDirectory(prefix="bench-kill-") as tmp:
        report = kill_loop(Path(tmp), common.daemon_env(Path(tmp), args.model), kill_batch(args.files), args.kills,
                           seed=args.seed, deadline=3600)
    print(common.table(["at s", "SIGKILL", "the worker was on"],
                       [[f"{k.at:.1f}", "+".join(k.victims), k.job] for k in report.kills]))
    print(report.summary())
    per_file = Counter(Path(j["path"]).name for j in report.jobs)
    lost = (sorted(set(report.files) - set(per_file)) + [n for n, c in per_file.items() if c > 1]
            + [Path(j["path"]).name for j in report.jobs if j["status"] not in ("done", "duplicate")])
    clean = sorted(report.outbox) == sorted(report.written)
    verdict = "PASS" if not lost and clean and not report.unparsable and report.integrity == "ok" else "FAIL"
    print(f"lost or repeated: {lost or 'none'}; outbox holds exactly the SRTs: {clean}; {verdict}")
    path = common.write_result("faults_kill", {
        "params": vars(args), "machine": machine, "verdict": verdict,
        "results": {"summary": report.summary(), "lost": lost, "kills": [vars(k) for k in report.kills],
                    "jobs": [{k: j[k] for k in ("path", "status", "attempts", "crashes", "audio_seconds", "error")}
                             for j in report.jobs], "worst_wer": report.worst_wer, "integrity": report.integrity},
    })
    print(f"wrote {path.relative_to(common.REPO)}")


if __name__ == "__main__":
    main()
