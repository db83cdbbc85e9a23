"""Helpers for tests that run daemon processes: start with a deadline, poll the database, sample."""

from __future__ import annotations

import math
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
_OUTPUT_FILES: dict[int, Path] = {}  # pid → the file start() sent that process's output to


def start(command: str, env: dict[str, str], *extra: str, output: Path | None = None,
          **popen: Any) -> subprocess.Popen[str]:
    """`python -m daemon COMMAND`; its output is piped, or appended to `output` for long or chatty runs
    (nobody reads a pipe while they run, and a full pipe would block the daemon)."""
    sink = output.open("a") if output is not None else subprocess.PIPE
    try:
        proc = subprocess.Popen([sys.executable, "-m", "daemon", command, *extra], env=env, cwd=REPO,
                                stdout=sink, stderr=subprocess.STDOUT, text=True, **popen)
        if output is not None:
            _OUTPUT_FILES[proc.pid] = output
        return proc
    finally:
        if output is not None:
            sink.close()  # type: ignore[union-attr]  # the child has its own copy


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 30) -> tuple[int, str]:
    """Signal the process and return its exit code and output; fails the test if it hangs."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as e:
        proc.kill()
        out, _ = proc.communicate()
        out = out if out is not None else output_of(proc)
        raise AssertionError(f"did not exit within {timeout} s of signal {sig}:\n{out}") from e
    return proc.returncode, out if out is not None else output_of(proc)


def output_of(proc: subprocess.Popen[str]) -> str:
    """What a process printed: its pipe's unread rest, or the file start() sent its output to."""
    if proc.stdout is not None:
        return proc.stdout.read()
    output = _OUTPUT_FILES.get(proc.pid)
    return output.read_text(errors="replace") if output is not None and output.exists() else ""


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


def outputs(db: Path, job_id: int) -> dict[str, Path]:
    """A job's files by format, as the `outputs` table lists them (read like rows() reads)."""
    return {r["format"]: Path(r["path"])
            for r in rows(db, "SELECT format, path FROM outputs WHERE job_id = ? ORDER BY id", (job_id,))}


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               proc: subprocess.Popen[str] | None = None, interval: float = 0.2) -> Any:
    """Poll until `predicate()` is truthy; fail with `what` (and the daemon's output) at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"daemon exited ({proc.returncode}) while waiting for {what}:\n{output_of(proc)}")
        time.sleep(interval)
    output = ""
    if proc is not None:
        _, output = stop(proc, signal.SIGKILL)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{output}")


def checkpointed(db: Path) -> dict[str, Any] | None:
    """The running job once it has committed a checkpoint, else None."""
    jobs = [j for j in rows(db) if j["status"] == "running" and j["processed_seconds"] > 0]
    return jobs[0] if jobs else None


def settled(db: Path, count: int) -> list[dict[str, Any]] | None:
    """All `count` jobs have reached a final state."""
    jobs = rows(db)
    if len(jobs) >= count and all(j["status"] in ("done", "failed", "duplicate") for j in jobs):
        return jobs
    return None


def srt_cues(path: Path) -> list[str]:
    """The text of each cue of an SRT file, read with an independent parser."""
    import srt

    return [cue.content for cue in srt.parse(path.read_text(encoding="utf-8"))]


def srt_text(path: Path) -> str:
    """The spoken text of an SRT file."""
    return " ".join(srt_cues(path))


class Lines:
    """Reads a piped process's output in a thread, so a test can wait for a message while it runs
    (for when its log file cannot be written, say). Read it with `text()`; stop() still works."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._lines.append(line)

    def text(self) -> str:
        return "".join(self._lines)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by the nearest-rank method: a value that was actually observed."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


class PeakSampler:
    """Calls `probe` every `interval` seconds in a thread and keeps the largest value (e.g. RSS,
    a file's size); a probe that raises (the process or file is gone) is skipped."""

    def __init__(self, probe: Callable[[], float], interval: float = 0.05) -> None:
        self.probe = probe
        self.interval = interval
        self.peak = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.probe())
                self.samples += 1
            except (OSError, psutil.Error):
                pass
            self._stop.wait(self.interval)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.peak


def log_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def warm_model_cache(cache_dir: Path, model: str = "tiny.en") -> Path:
    """Resolve (converting once) the model into `cache_dir`/models the way the worker does, so a test
    can then watch a worker that needs neither a conversion nor the network."""
    code = ("import sys; from pathlib import Path; from daemon.engine.weights import resolve_model; "
            "print(resolve_model(sys.argv[1], Path(sys.argv[2])).checkpoint)")
    done = subprocess.run([sys.executable, "-c", code, model, str(cache_dir / "models")], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=True)
    return Path(done.stdout.strip().splitlines()[-1])
