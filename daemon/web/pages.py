"""What the pages show, read through the queue's own code (JobQueue, the registry, the standby
lock) over read-only connections: SQLite opened `mode=ro` and `query_only`, PostgreSQL in read-only
transactions, so serving the page never holds the queue's write lock."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from daemon.config import Config
from daemon.queue.db import Job, JobStatus, SchemaMismatch, WorkerRow, connect, connect_readonly, describe
from daemon.queue.jobs import JobQueue
from daemon.queue.registry import workers
from daemon.queue.standby import watcher_active
from daemon.queue.summary import worker_state
from daemon.transcript import Segment
from daemon.web.files import plain_file

PAGE_SIZE = 100  # jobs per page: the page renders in the same time with 10 jobs or 10,000 (bench/web.py)
MAX_ID = 2**63 - 1  # the largest id a database can hold; a larger one in a URL is no job
FINISHED = (JobStatus.DONE, JobStatus.DUPLICATE)  # jobs with a transcript
RETRYABLE = (JobStatus.FAILED, JobStatus.DONE, JobStatus.DUPLICATE)  # what JobQueue.retry takes


class NotReady(Exception):
    """The queue cannot be read yet (no database, an older schema, the server unreachable): the page says why."""


class Source:
    """The queue's database, opened read-only on first use and again after a failure; a writable
    connection only for the actions, and only when they are enabled."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._writer: JobQueue | None = None

    def reader(self) -> JobQueue:
        with self._lock:
            if self._engine is None:
                try:
                    self._engine = connect_readonly(self.cfg.db)
                except (FileNotFoundError, SchemaMismatch) as e:
                    raise NotReady(str(e)) from e
                except OperationalError as e:
                    raise NotReady(f"cannot reach the queue {describe(self.cfg.db)}: {e.orig}") from e
            return JobQueue(self._engine, inbox=self.cfg.inbox)

    def writer(self) -> JobQueue:
        with self._lock:
            if self._writer is None:
                self._writer = JobQueue(connect(self.cfg.db), inbox=self.cfg.inbox)
            return self._writer

    def failed(self) -> None:
        """A read failed (the server restarted, the file was replaced): open it afresh next time."""
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
            self._engine = None


@dataclass(frozen=True)
class Worker:
    row: WorkerRow
    state: str  # idle, busy, paused, backoff, or gone
    job: Job | None


@dataclass(frozen=True)
class Overview:
    jobs: list[Job]
    outputs: dict[int, list[Path]]
    counts: dict[JobStatus, int]
    matching: int  # jobs the filter finds, on every page
    workers: list[Worker]
    watcher_active: bool


def overview(source: Source, status: JobStatus | None, search: str, page: int) -> Overview:
    queue = source.reader()
    counts = queue.counts(search)
    jobs = queue.jobs(PAGE_SIZE, status=status, search=search, offset=page * PAGE_SIZE)
    rows = workers(queue.engine)
    current = {j.id: j for j in queue.get(w.current_job_id for w in rows if w.current_job_id is not None)}
    now = datetime.now(timezone.utc)
    return Overview(jobs=jobs, outputs=queue.outputs_of(j.id for j in jobs if j.id is not None), counts=counts,
                    matching=counts.get(status, 0) if status else sum(counts.values()),
                    workers=[Worker(w, worker_state(w, now), current.get(w.current_job_id)) for w in rows],
                    watcher_active=watcher_active(source.cfg.db, queue.engine))


def job(source: Source, job_id: int) -> Job | None:
    found = source.reader().get([job_id]) if 0 <= job_id <= MAX_ID else []
    return found[0] if found else None


def transcript(source: Source, shown: Job) -> list[Segment]:
    """The job's segments (a duplicate's are its original's), a running job's as far as it has got.
    The page follows the segments, a sentence or so each, not the subtitle cues: cutting cues takes
    seconds for a 2-hour recording (bench/web.py), and the cue files are a click away."""
    assert shown.id is not None
    return source.reader().segments(shown.duplicate_of or shown.id)


def speakers(outputs: list[Path]) -> tuple[str, ...]:
    """Issue 23 (speaker labels) is being built alongside: when a job's JSON transcript names its
    speakers (a top-level "speakers" list, or a "speaker" on segments), the page shows them. Nothing
    else depends on it; read once per version of the file."""
    found = next((p for p in outputs if p.suffix == ".json"), None)
    if found is None or plain_file(found) is None:
        return ()
    try:
        stat = found.stat()
    except OSError:
        return ()
    return _speakers(found, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=512)
def _speakers(path: Path, _size: int, _mtime_ns: int) -> tuple[str, ...]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ()
    if not isinstance(document, dict):
        return ()
    listed = document.get("speakers")
    if not isinstance(listed, list):
        listed = [s.get("speaker") for s in document.get("segments") or [] if isinstance(s, dict)]
    return tuple(dict.fromkeys(str(s) for s in listed if s))
