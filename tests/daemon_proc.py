"""Helpers for tests that run daemon processes: start with a deadline, poll the database."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def start(command: str, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "daemon", command, *extra], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 30) -> tuple[int, str]:
    """Signal the process and return its exit code and output; fails the test if it hangs."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"did not exit within {timeout} s of signal {sig}:\n{out}")
    return proc.returncode, out


def rows(db: Path, sql: str = "SELECT * FROM jobs ORDER BY id", args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Read like a person with `sqlite3 -readonly` would."""
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, args)]
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return []
        raise
    finally:
        conn.close()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               proc: subprocess.Popen[str] | None = None) -> Any:
    """Poll until `predicate()` is truthy; fail with `what` (and the daemon's output) at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"daemon exited ({proc.returncode}) while waiting for {what}:\n{proc.stdout.read()}")
        time.sleep(0.2)
    output = ""
    if proc is not None:
        _, output = stop(proc, signal.SIGKILL)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{output}")


def settled(db: Path, count: int) -> list[dict[str, Any]] | None:
    """All `count` jobs have reached a final state."""
    jobs = rows(db)
    if len(jobs) >= count and all(j["status"] in ("done", "failed", "duplicate") for j in jobs):
        return jobs
    return None


def srt_text(path: Path) -> str:
    """The spoken text of an SRT file, read with an independent parser."""
    import srt

    return " ".join(cue.content for cue in srt.parse(path.read_text(encoding="utf-8")))
