"""Resume after SIGKILL: kill the worker at random moments of one long job, restart it each time.

The final SRT's cues must equal an uninterrupted run's (no duplicate, no missing cue), and each
restart may re-transcribe at most the window that was in flight when the worker died: the audio
between the last committed checkpoint and the first checkpoint after the restart.
"""

from __future__ import annotations

import argparse
import random
import signal
import tempfile
import time
from pathlib import Path

import srt
from common import daemon_env, daemon_transcribe, enqueue, recording, table, write_result

from daemon.config import Config
from tests.daemon_proc import rows, start, wait_until

CHUNK_SECONDS = Config.chunk_seconds


def processed(db: Path) -> tuple[str, float]:
    (job,) = rows(db)
    return job["status"], job["processed_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    audio, _ = recording(args.minutes, seed=args.seed)
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        reference = daemon_transcribe(audio, args.model, tmp / "uninterrupted")
        wall = reference.measurement.wall_seconds
        env = daemon_env(tmp / "killed", args.model)
        db = tmp / "killed" / "jobs.db"
        enqueue(audio, env)
        kills: list[dict[str, float | int | str]] = []
        while True:
            worker = start("work", env, "--exit-when-empty", output=tmp / "work.out")
            _, start_at = processed(db)

            def moved_on() -> float | None:
                status, seconds = processed(db)
                return seconds if seconds > start_at or status == "done" else None

            if kills:  # the restart's first checkpoint closes the window that was in flight at the kill
                # A fine poll: a coarse one could miss the first checkpoint and report the second.
                first = wait_until(moved_on, 600, "the first checkpoint after the restart", interval=0.05)
                kills[-1]["first_checkpoint_after_restart_s"] = round(first, 2)
                kills[-1]["re_transcribed_s"] = round(first - start_at, 2)
            if len(kills) == args.kills:
                worker.wait(timeout=3600)
                break
            time.sleep(rng.uniform(1.0, wall / args.kills))
            if worker.poll() is not None:
                break  # finished before this kill
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            kills.append({"kill": len(kills) + 1, "committed_at_kill_s": round(processed(db)[1], 2)})
        reference_cues = [c.content for c in srt.parse(reference.srt_path.read_text(encoding="utf-8"))]
        killed_srt = next((tmp / "killed" / "outbox").glob("*.srt"))
        resumed_cues = [c.content for c in srt.parse(killed_srt.read_text(encoding="utf-8"))]

    missing = len([c for c in reference_cues if c not in resumed_cues])
    extra = len(resumed_cues) - len(reference_cues) + missing
    worst = max(float(r["re_transcribed_s"]) for r in kills)
    print(table(["kill", "committed at kill s", "1st checkpoint after restart s", "re-transcribed s"],
                [[r["kill"], r["committed_at_kill_s"], r["first_checkpoint_after_restart_s"], r["re_transcribed_s"]]
                 for r in kills]))
    same = resumed_cues == reference_cues
    print(f"\nuninterrupted cues {len(reference_cues)}, after {len(kills)} kills {len(resumed_cues)}: "
          f"identical={same}, missing={missing}, duplicated/extra={extra}")
    print(f"worst re-transcribed audio after a kill: {worst:.1f} s (target ≤ one chunk, {CHUNK_SECONDS:.0f} s): "
          f"{'PASS' if worst <= CHUNK_SECONDS and same else 'FAIL'}")
    write_result("resume", {"minutes": args.minutes, "model": args.model, "kills": kills, "identical": same,
                            "missing": missing, "extra": extra, "worst_re_transcribed_s": worst})


if __name__ == "__main__":
    main()
