"""Fault scenarios shared by the CI tests (tests/test_faults.py, small loads) and the benchmarks
(bench/faults_*.py, the issue's full loads). Each runs real daemon processes against a real
SQLite file and returns what it measured; the callers decide what to assert or print.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import psutil

from daemon.config import ENV_PREFIX
from tests.daemon_proc import (
    PeakSampler,
    log_text,
    outputs,
    percentile,
    rows,
    settled,
    srt_text,
    start,
    stop,
    wait_until,
)
from tests.speech import Recording, meeting, sentences, wer, write_audio, write_slowly

MB = 1 << 20
LOCKED = "database is locked"
T = TypeVar("T")
READER_QUERY = "SELECT id, status, round(progress, 3), processed_seconds FROM jobs;"


def paths(env: dict[str, str]) -> tuple[Path, Path, Path, Path]:
    """inbox, outbox, database and log folder of a daemon environment."""
    return (Path(env["WHISPER_DAEMON_INBOX"]), Path(env["WHISPER_DAEMON_OUTBOX"]), Path(env["WHISPER_DAEMON_DB"]),
            Path(env["WHISPER_DAEMON_LOG_DIR"]))


def _created(job: dict[str, Any]) -> float:
    return datetime.fromisoformat(job["created_at"]).timestamp()


def _ready(log: Path, marker: str, count: int = 1) -> bool:
    return log_text(log).count(marker) >= count


class MountError(RuntimeError):
    """A file system the test needs could not be mounted here; the message is mount's."""


@contextmanager
def full_tmpfs(folder: Path) -> Iterator[Path]:
    """`folder` (made) on a 64 KiB tmpfs of its own, filled up: a real ENOSPC there, and only there.
    Needs mount rights (root with CAP_SYS_ADMIN)."""
    folder.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(folder)],
                             capture_output=True, text=True, timeout=30)
    if mounted.returncode != 0:
        raise MountError(mounted.stderr.strip())
    try:
        with (folder / "filler").open("wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass  # full
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True, timeout=30)


# --------------------------------------------------------------------------- 1. flood


@dataclass
class FloodReport:
    files: int
    slow_files: int
    quiet_seconds: float
    jobs: int
    jobs_per_path_max: int
    missing: list[str]
    early: list[str]  # queued before their last byte was written
    latencies: list[float]  # seconds from a file's last write to its job's creation
    watcher_peak_rss_mb: float
    watcher_torch_loaded: bool
    queued_all_seconds: float  # from the first copy to the last job

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 99)

    def summary(self) -> str:
        return (f"flood: {self.files} copied at once + {self.slow_files} written slowly → {self.jobs} jobs "
                f"(max {self.jobs_per_path_max} per file, {len(self.missing)} missing, {len(self.early)} early) "
                f"in {self.queued_all_seconds:.1f} s; enqueue latency p50 {self.p50:.2f} s, p99 {self.p99:.2f} s "
                f"(quiet period {self.quiet_seconds:g} s included); watcher peak RSS "
                f"{self.watcher_peak_rss_mb:.0f} MB, torch loaded: {self.watcher_torch_loaded}")


def short_recordings(folder: Path, count: int) -> list[Path]:
    """`count` different short recordings (one spoken sentence, a distinct lead-in of silence each),
    in the formats a phone or recorder card would hold."""
    folder.mkdir(parents=True, exist_ok=True)
    voice = sentences()[0].audio
    made = []
    for i in range(count):
        ext = (".m4a", ".mp3", ".wav")[i % 3]
        made.append(write_audio(np.concatenate([np.zeros(160 * (i + 1), np.float32), voice]),
                                folder / f"memo {i:04d}{ext}"))
    return made


def flood(root: Path, env: dict[str, str], files: int, slow_files: int, *, quiet_seconds: float = 2.0,
          slow_seconds: float = 5.0, deadline: float = 600) -> FloodReport:
    """The real `watch` process (no worker): `files` recordings copied into the inbox at once and,
    while it is busy with them, `slow_files` more written in pieces over `slow_seconds`."""
    inbox, _, db, logs = paths(env)
    env = {**env, "WHISPER_DAEMON_QUIET_SECONDS": str(quiet_seconds)}
    card = short_recordings(root / "card", files + slow_files)
    flood_files, slow_sources = card[:files], card[files:]
    watcher = start("watch", env, output=root / "watch.out")
    rss = PeakSampler(lambda: psutil.Process(watcher.pid).memory_info().rss / MB)
    try:
        wait_until(lambda: _ready(logs / "watcher.log", "watching"), 60, "the watcher to start", watcher)
        began = time.time()
        # Each piece lands well within the quiet period, so none of these may be queued early.
        writers = [threading.Thread(target=write_slowly, args=(src.read_bytes(), inbox / src.name, slow_seconds,
                                                               max(2, round(slow_seconds / quiet_seconds * 4))))
                   for src in slow_sources]
        for writer in writers:
            writer.start()
        for src in flood_files:
            shutil.copyfile(src, inbox / src.name)
        for writer in writers:
            writer.join()
        total = files + slow_files
        jobs = wait_until(lambda: (found := rows(db)) and len(found) >= total and found, deadline,
                          f"{total} jobs", watcher)
        queued_all = max(_created(j) for j in jobs) - began
        time.sleep(2 * quiet_seconds + 0.5)  # inherent: give a second (wrong) enqueue of any file its chance
        jobs = rows(db)
        torch = any("torch" in m.path for m in psutil.Process(watcher.pid).memory_maps())
    finally:
        peak = rss.stop()
        stop(watcher)
    per_path = Counter(Path(j["path"]).name for j in jobs)
    by_name = {Path(j["path"]).name: j for j in jobs}
    latencies, early = [], []
    for src in card:
        job = by_name.get(src.name)
        if job is None:
            continue
        final = (inbox / src.name).stat()
        latencies.append(_created(job) - final.st_mtime_ns / 1e9)
        if job["size"] != final.st_size or _created(job) < final.st_mtime_ns / 1e9:
            early.append(src.name)
    return FloodReport(files, slow_files, quiet_seconds, len(jobs), max(per_path.values(), default=0),
                       sorted({s.name for s in card} - set(per_path)), early, latencies, peak, torch, queued_all)


# --------------------------------------------------------------------------- 2. readers


@dataclass
class ReadersReport:
    sessions: int
    oneshots: int
    audio_seconds: float
    job: dict[str, Any]
    queries: int  # answered by all readers together
    reader_errors: list[str]
    daemon_locked: int  # "database is locked" lines in the daemon's logs
    max_wal_bytes: float
    wal_samples: int

    @property
    def reader_locked(self) -> int:
        return sum(LOCKED in e for e in self.reader_errors)

    def summary(self) -> str:
        return (f"readers: {self.sessions} sqlite3 sessions + {self.oneshots} one-shot pollers every 50 ms during "
                f"{self.audio_seconds:.0f} s of transcription ({self.job['status']}); {self.queries} queries; "
                f"'{LOCKED}': {self.reader_locked} in readers, {self.daemon_locked} in the daemon; other reader "
                f"errors: {len(self.reader_errors) - self.reader_locked}; max WAL {self.max_wal_bytes / 1024:.0f} KiB "
                f"({self.wal_samples} samples)")


def _reader_command(db: Path) -> list[str]:
    sqlite3_cli = shutil.which("sqlite3")
    if sqlite3_cli:
        return [sqlite3_cli, "-readonly", str(db)]
    # No sqlite3 shell here: the same read-only connection from Python; statements as arguments or lines.
    code = ("import sqlite3, sys\nconn = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True, timeout=0)\n"
            "for line in sys.argv[2:] or sys.stdin:\n    try:\n"
            "        print(conn.execute(line).fetchall(), flush=True)\n"
            "    except sqlite3.Error as e:\n        print(f'Error: {e}', file=sys.stderr, flush=True)\n")
    return [sys.executable, "-c", code, str(db)]


@dataclass
class Polled:
    """What the readers of poll_during got."""

    answered: int  # one-shot queries that got an answer
    outputs: list[str]  # each long-lived session's output
    errors: list[str]  # every line any reader wrote to stderr, and sessions that went away


def poll_during(root: Path, wait: Callable[[], T], session: list[str], oneshot: list[str], query: str,
                sessions: int, oneshots: int, interval: float, answered: Callable[[str], bool]) -> tuple[T, Polled]:
    """Readers polling the queue while `wait()` waits for the daemon: `sessions` long-lived `session`
    shells fed `query` on stdin, and `oneshots` loops of `oneshot` with `query` as its last argument,
    each every `interval`; `answered(stdout)` says whether a one-shot got its answer. Returns what
    `wait` returned and what the readers got; every reader is stopped, however `wait` ends."""
    shells: list[subprocess.Popen[str]] = []
    errors: list[str] = []
    got = [0]
    halt = threading.Event()
    try:
        for i in range(sessions):
            with (root / f"reader{i}.out").open("w") as out, (root / f"reader{i}.err").open("w") as err:
                shells.append(subprocess.Popen(session, stdin=subprocess.PIPE, stdout=out, stderr=err, text=True))

        def feed() -> None:
            while not halt.wait(interval):
                for shell in shells:
                    try:
                        shell.stdin.write(query + "\n")  # type: ignore[union-attr]
                        shell.stdin.flush()  # type: ignore[union-attr]
                    except OSError as e:  # the session is gone
                        errors.append(f"session {shell.pid}: {e}")
                        return

        def poll_once() -> None:  # the README's one-liners, run again and again
            while not halt.wait(interval):
                done = subprocess.run([*oneshot, query], capture_output=True, text=True, timeout=30,
                                      stdin=subprocess.DEVNULL)
                got[0] += answered(done.stdout)
                errors.extend(line for line in done.stderr.splitlines() if line.strip())

        threads = [threading.Thread(target=feed)] + [threading.Thread(target=poll_once) for _ in range(oneshots)]
        for thread in threads:
            thread.start()
        try:
            result = wait()
        finally:
            halt.set()
            for thread in threads:
                thread.join(timeout=60)
    finally:
        for shell in shells:
            if shell.stdin:
                shell.stdin.close()  # EOF: the shell exits
            try:
                shell.wait(timeout=30)
            except subprocess.TimeoutExpired:
                shell.kill()
    for i in range(sessions):
        errors.extend(line for line in log_text(root / f"reader{i}.err").splitlines() if line.strip())
    return result, Polled(got[0], [log_text(root / f"reader{i}.out") for i in range(sessions)], errors)


def readers(root: Path, env: dict[str, str], sessions: int, oneshots: int, audio_seconds: float, *,
            interval: float = 0.05, deadline: float = 900) -> ReadersReport:
    """`run` transcribes one recording while `sessions` long-lived `sqlite3 -readonly` shells and
    `oneshots` loops of one-off `sqlite3 -readonly DB "SELECT …"` poll the jobs every `interval`."""
    inbox, _, db, logs = paths(env)
    recording = meeting(audio_seconds, seed=11)
    recording.write(root / "talk.m4a")
    shutil.copyfile(root / "talk.m4a", inbox / "talk.m4a")
    wal = db.with_name(db.name + "-wal")
    daemon = start("run", env, output=root / "run.out")
    wal_size = PeakSampler(lambda: wal.stat().st_size)
    try:
        wait_until(lambda: rows(db), 120, "the job to be queued", daemon)
        (job,), polled = poll_during(
            root, lambda: wait_until(lambda: settled(db, 1), deadline, "the transcription", daemon),
            _reader_command(db), _reader_command(db), READER_QUERY, sessions, oneshots, interval, bool)
    finally:
        peak_wal = wal_size.stop()
        stop(daemon)
    answered = polled.answered + sum(output.count("\n") for output in polled.outputs)
    daemon_locked = sum(log_text(log).count(LOCKED) for log in (logs / "run.log", logs / "watcher.log",
                                                                  logs / "worker.log", root / "run.out"))
    return ReadersReport(sessions, oneshots, recording.seconds, job, answered, polled.errors, daemon_locked,
                         peak_wal, wal_size.samples)


# --------------------------------------------------------------------------- 3. kill loops


@dataclass
class Kill:
    at: float  # seconds into the batch
    victims: tuple[str, ...]
    job: str  # what the worker was doing, from the database


@dataclass
class KillReport:
    files: dict[str, str]  # inbox name -> reference text
    lengths: dict[str, float]  # inbox name -> seconds of audio
    kills: list[Kill]
    jobs: list[dict[str, Any]]
    outbox: list[str]
    written: list[str]  # the names of the jobs' files, as the outputs table lists them
    worst_wer: float
    unparsable: list[str]
    integrity: str
    broken_segments: list[int]  # jobs whose segment numbers are not 0..n-1
    seconds: float
    worker_log: str

    def summary(self) -> str:
        states = Counter(j["status"] for j in self.jobs)
        worker_kills = sum("work" in k.victims for k in self.kills)
        return (f"kill loop: {len(self.files)} files, {len(self.kills)} SIGKILLs ({worker_kills} of the worker, "
                f"{len(self.kills) - worker_kills} of the watcher only) over {self.seconds:.0f} s → "
                f"{dict(states)}; {len(self.outbox)} files in the outbox; worst WER {self.worst_wer:.2f}; "
                f"unparsable SRTs: {len(self.unparsable)}; integrity_check: {self.integrity}; "
                f"max attempts {max(j['attempts'] for j in self.jobs)}")


def kill_batch(count: int, seconds: tuple[float, float] = (20.0, 70.0)) -> dict[str, Recording]:
    """`count` distinct speech recordings of one to three 30 s windows, in four formats."""
    lengths = np.linspace(*seconds, count)
    return {f"talk {i:02d}{('.m4a', '.mp3', '.wav', '.ogg')[i % 4]}": meeting(float(length), seed=100 + i)
            for i, length in enumerate(lengths)}


def kill_loop(root: Path, env: dict[str, str], batch: dict[str, Recording], kills: int, *, seed: int = 0,
              gap: tuple[float, float] = (0.5, 8.0), deadline: float = 900) -> KillReport:
    """`watch` and `work` as separate processes; SIGKILL one or both at `kills` random moments while
    the batch arrives and is transcribed, restarting them at once; then let the batch finish.

    Every crash here is the loop's own doing: a file whose first window the random kills hit
    max_attempts times would be given up as one that crashes the worker (that guard has tests of
    its own), so the worker is allowed one attempt more than there are kills."""
    env = {**env, f"{ENV_PREFIX}MAX_ATTEMPTS": str(kills + 1)}
    inbox, outbox, db, logs = paths(env)
    rng = random.Random(seed)
    staging = root / "staging"
    staging.mkdir()
    files: dict[str, str] = {}
    for name, recording in batch.items():
        recording.write(staging / name)
        files[name] = recording.text
    first = next(iter(batch))
    twin = f"copy of {first}"  # same bytes: must end as a `duplicate` of the first, never a second run
    shutil.copyfile(staging / first, staging / twin)
    files[twin] = batch[first].text
    lengths = {name: batch[name if name != twin else first].seconds for name in files}
    arrivals = list(files)

    def arrive(count: int) -> None:
        for name in arrivals[:count]:
            shutil.copyfile(staging / name, inbox / name)
        del arrivals[:count]

    procs = {"watch": start("watch", env, output=root / "watch.out"),
             "work": start("work", env, output=root / "work.out")}
    killed: list[Kill] = []
    began = time.monotonic()
    try:
        arrive(3)
        worker_starts = 1
        for _ in range(kills):
            # Random moments once the worker is up: kills during model loading alone would test little.
            wait_until(lambda: _ready(logs / "worker.log", "worker ready", worker_starts), 180,
                       "the worker to be ready", procs["work"])
            time.sleep(rng.uniform(*gap))  # inherent: the moments are meant to be random in time
            victims = rng.choice([("work",), ("work",), ("watch",), ("watch", "work")])
            running = [j for j in rows(db) if j["status"] == "running"]
            doing = ", ".join(f"job {j['id']} at {j['processed_seconds']:.0f} s" for j in running) or "no job"
            for command in victims:
                procs[command].kill()
                procs[command].wait(timeout=30)
                procs[command] = start(command, env, output=root / f"{command}.out")
                worker_starts += command == "work"
            killed.append(Kill(round(time.monotonic() - began, 1), victims, doing))
            arrive(rng.randint(0, 2))  # files keep arriving, so some kills land while the watcher works
        arrive(len(arrivals))
        wait_until(lambda: settled(db, len(files)), deadline, "the batch to finish", procs["work"])
        time.sleep(3)  # inherent: a quiet period and more, in which a wrongly repeated enqueue would show
        jobs = rows(db)
    finally:
        for proc in procs.values():
            stop(proc)
        seconds = time.monotonic() - began
    unparsable, worst = [], 0.0
    written = {job["id"]: outputs(db, job["id"]) for job in jobs}
    for job in jobs:
        try:
            worst = max(worst, wer(files[Path(job["path"]).name], srt_text(written[job["id"]]["srt"])))
        except Exception as e:  # missing or not valid SRT: recorded, asserted by the caller
            unparsable.append(f"job {job['id']} ({Path(job['path']).name}): {type(e).__name__}: {e}")
    integrity = ", ".join(r["integrity_check"] for r in rows(db, "PRAGMA integrity_check"))
    broken = [r["job_id"] for r in rows(db, "SELECT job_id, count(*) AS n, max(seq) AS top FROM segments GROUP BY job_id")
              if r["top"] != r["n"] - 1]
    return KillReport(files, lengths, killed, jobs, sorted(p.name for p in outbox.iterdir()),
                      sorted(path.name for by_format in written.values() for path in by_format.values()), worst, unparsable,
                      integrity, broken, seconds, log_text(logs / "worker.log"))
