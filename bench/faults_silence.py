"""Fault suite, row 5 (silence) at full length: hours of digital silence, and of quiet room tone
(white noise, -70 dBFS by default), must come back as an empty SRT, quickly (target: a minute per
hour of audio, model load included).

Runs `work --exit-when-empty` on each file with a deadline; at the deadline it stops the worker
and reports how far it got, its real-time factor, and the cues it had produced by then.

    .venv/bin/python bench/faults_silence.py [--hours 3] [--room-dbfs -70 -60] [--deadline 1800]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import common

from tests.daemon_proc import rows, start, stop


def run(audio: Path, model: str, deadline: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-silence-") as tmp:
        env = common.daemon_env(Path(tmp), model)
        db = Path(env["WHISPER_DAEMON_DB"])
        common.enqueue(audio, env)
        began = time.monotonic()
        worker = start("work", env, "--exit-when-empty", output=Path(tmp) / "work.out")
        while worker.poll() is None and time.monotonic() - began < deadline:
            time.sleep(1)  # a coarse poll: this runs for minutes to hours
        elapsed = time.monotonic() - began
        stop(worker, timeout=120)
        (job,) = rows(db)
        cues = rows(db, "SELECT text FROM segments WHERE job_id = ?", (job["id"],))
    processed = job["processed_seconds"] if job["status"] != "done" else job["audio_seconds"]
    return {"status": job["status"], "seconds": elapsed, "processed_seconds": processed,
            "rtf": elapsed / max(processed, 1e-6), "cues": len(cues),
            "cue_texts": sorted({c["text"] for c in cues})[:10]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=3.0)
    parser.add_argument("--room-dbfs", nargs="*", type=float, default=[-70.0],
                        help="room-tone levels to try besides digital zeros (RMS, dBFS)")
    parser.add_argument("--deadline", type=float, default=1800.0, help="seconds per file before giving up")
    parser.add_argument("--model", default="tiny.en")
    args = parser.parse_args()
    machine = common.machine()
    common.converted_checkpoint(args.model)
    results, table = {}, []
    for level in [None, *args.room_dbfs]:
        kind = "zeros" if level is None else f"room tone {level:g} dBFS"
        r = results[kind] = run(common.silence(args.hours, level), args.model, args.deadline)
        table.append([kind, r["status"], f"{r['processed_seconds']:.0f}", f"{r['seconds']:.0f}", f"{r['rtf']:.3f}",
                      f"{r['rtf'] * args.hours * 3600 / 60:.0f}", r["cues"], ", ".join(map(repr, r["cue_texts"][:3]))])
    print(common.table(["silence", "status", "audio s done", "wall s", "RTF", f"min for {args.hours:g} h", "cues",
                        "cue texts"], table))
    target = 60 / 3600  # a minute per hour of silence
    verdict = "PASS" if all(r["status"] == "done" and r["cues"] == 0 and r["rtf"] <= target
                            for r in results.values()) else "FAIL"
    print(f"empty SRT at RTF <= {target:.3f}: {verdict}")
    path = common.write_result("faults_silence", {"params": vars(args), "machine": machine, "verdict": verdict,
                                                  "results": results})
    print(f"wrote {path.relative_to(common.REPO)}")


if __name__ == "__main__":
    main()
