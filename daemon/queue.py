"""The job queue: enqueue, claim, finish. Portable SQL only; SQLite specifics stay in db.py."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, delete, func, update
from sqlmodel import Session, col, select

from daemon.db import Job, JobStatus, SegmentRow, reading, utcnow, writing
from daemon.transcript import Checkpoint, Segment, Window

MAX_ATTEMPTS = 3
HASH_BLOCK = 1 << 20
NAME_MAX = 255  # bytes in one file name on ext4, APFS and most other file systems


def as_text(path: Path) -> str:
    """The path as text for the database and logs: bytes that are not UTF-8 (possible in Linux
    file names) become \\xNN escapes instead of failing to encode."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Enqueued:
    job: Job
    created: bool


class JobQueue:
    def __init__(self, engine: Engine, outbox: Path, clock: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self.outbox = outbox
        self.clock = clock

    def enqueue(self, path: Path) -> Enqueued:
        """Queue `path` unless this exact file (same path, same content) is already known.

        Same content under another name is queued too; the worker turns it into a `duplicate`
        that copies the first transcript instead of running the model again.
        """
        path = path.absolute()
        stat = path.stat()
        with reading(self.engine) as session:
            latest = self._latest_for_path(session, path)
        if latest is not None and (latest.size, latest.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
            return Enqueued(latest, False)  # unchanged since we saw it: skip hashing
        digest = sha256_file(path)  # outside the transaction: hashing a long video takes seconds
        with writing(self.engine) as session:
            latest = self._latest_for_path(session, path)
            if latest is not None and latest.sha256 == digest:
                latest.size, latest.mtime_ns = stat.st_size, stat.st_mtime_ns
                session.add(latest)
                return Enqueued(latest, False)
            if latest is not None and latest.status == JobStatus.QUEUED:
                # Replaced before the worker finished it: transcribe the new content from the start.
                latest.sha256, latest.size, latest.mtime_ns = digest, stat.st_size, stat.st_mtime_ns
                _reset_progress(session, latest)
                return Enqueued(latest, True)
            srt_path = latest.srt_path if latest is not None else self._free_srt_path(session, path)
            job = Job(path=str(path), sha256=digest, size=stat.st_size, mtime_ns=stat.st_mtime_ns,
                      srt_path=srt_path, created_at=self.clock())
            session.add(job)
            session.flush()
            return Enqueued(job, True)

    def reject(self, path: Path, reason: str) -> Enqueued:
        """Record a file that will not be transcribed (unreadable, a link, …) as a `failed` job, so
        `status` says why. Rescans of the same unchanged file add nothing."""
        stat = path.lstat()
        text = Path(as_text(path.absolute()))
        error = f"{text.name}: {reason}"
        with writing(self.engine) as session:
            latest = self._latest_for_path(session, text)
            if latest is not None and (latest.size, latest.mtime_ns, latest.error) == (
                    stat.st_size, stat.st_mtime_ns, error):
                return Enqueued(latest, False)
            now = self.clock()
            job = Job(path=str(text), sha256="", size=stat.st_size, mtime_ns=stat.st_mtime_ns, status=JobStatus.FAILED,
                      error=error, srt_path=latest.srt_path if latest else self._free_srt_path(session, text),
                      created_at=now, finished_at=now)
            session.add(job)
            session.flush()
            return Enqueued(job, True)

    def claim(self) -> Job | None:
        """Atomically move the oldest claimable job to `running`.

        A job whose content is being transcribed right now waits, so that it becomes a
        duplicate of that job rather than a second transcription.
        """
        busy_content = select(Job.sha256).where(Job.status == JobStatus.RUNNING)
        next_id = (
            select(Job.id)
            .where(Job.status == JobStatus.QUEUED, col(Job.sha256).not_in(busy_content))
            .order_by(col(Job.crashes), col(Job.id))  # a job that just killed a worker waits its turn
            .limit(1)
            .scalar_subquery()
        )
        stmt = (
            update(Job)
            .where(col(Job.id) == next_id)
            .values(status=JobStatus.RUNNING, attempts=Job.attempts + 1, started_at=self.clock(),
                    finished_at=None, error=None, resumed_from=Job.processed_seconds)
            .returning(Job.id)
        )
        with writing(self.engine) as session:
            job_id = session.execute(stmt).scalar_one_or_none()
            return None if job_id is None else session.get(Job, job_id)

    def finish(self, job_id: int, status: JobStatus, **fields: object) -> Job:
        with writing(self.engine) as session:
            job = session.get_one(Job, job_id)
            job.status = status
            job.finished_at = self.clock()
            for name, value in fields.items():
                setattr(job, name, value)
            session.add(job)
            return job

    def fail(self, job_id: int, error: str) -> Job:
        return self.finish(job_id, JobStatus.FAILED, error=error)

    def release(self, job_id: int) -> None:
        """Put a job back because the worker is stopping; the interrupted try does not count."""
        with writing(self.engine) as session:
            job = session.get_one(Job, job_id)
            job.status = JobStatus.QUEUED
            job.attempts = max(0, job.attempts - 1)
            session.add(job)

    def recover(self, max_attempts: int = MAX_ATTEMPTS, held: Iterable[int] = ()) -> list[Job]:
        """Requeue jobs left `running` by a crashed worker (not those `held` by live ones);
        give up on files that crashed it `max_attempts` times in a row without progress."""
        with writing(self.engine) as session:
            stuck = session.exec(
                select(Job).where(Job.status == JobStatus.RUNNING, col(Job.id).not_in(list(held)))
            ).all()
            for job in stuck:
                job.crashes = 0 if job.processed_seconds > job.resumed_from else job.crashes + 1
                if job.crashes >= max_attempts:
                    job.status = JobStatus.FAILED
                    job.finished_at = self.clock()
                    job.error = (f"the worker stopped unexpectedly {job.crashes} times in a row while "
                                 f"transcribing this file (never past {job.processed_seconds:.0f} s of it); "
                                 "giving up (use `retry` to try again)")
                else:
                    job.status = JobStatus.QUEUED
                session.add(job)
            return list(stuck)

    def retry(self, ids: Iterable[int] = (), *, failed: bool = False) -> list[Job]:
        query = select(Job).where(col(Job.status).in_([JobStatus.FAILED, JobStatus.DONE, JobStatus.DUPLICATE]))
        query = query.where(Job.status == JobStatus.FAILED) if failed else query.where(col(Job.id).in_(list(ids)))
        with writing(self.engine) as session:
            jobs = session.exec(query).all()
            for job in jobs:
                job.status, job.attempts, job.error = JobStatus.QUEUED, 0, None
                job.started_at = job.finished_at = None
                _reset_progress(session, job)
            return list(jobs)

    def save_window(self, job_id: int, window: Window, audio_seconds: float | None, rtf: float) -> None:
        """Commit a window's segments and the checkpoint after it in one transaction."""
        with writing(self.engine) as session:
            job = session.get_one(Job, job_id)
            seq = session.exec(select(func.count()).where(SegmentRow.job_id == job_id)).one()
            for i, seg in enumerate(window.segments, start=seq):
                session.add(SegmentRow(job_id=job_id, seq=i, start=seg.start, end=seg.end, text=seg.text))
            job.processed_seconds = window.checkpoint.offset_seconds
            job.prompt = json.dumps(window.checkpoint.prompt)
            job.language = window.checkpoint.language
            job.audio_seconds = max(audio_seconds or 0.0, window.decoded_seconds)
            job.progress = min(1.0, job.processed_seconds / job.audio_seconds) if job.audio_seconds else 0.0
            job.rtf = rtf
            session.add(job)

    def segments(self, job_id: int) -> list[Segment]:
        with reading(self.engine) as session:
            rows = session.exec(select(SegmentRow).where(SegmentRow.job_id == job_id).order_by(col(SegmentRow.seq)))
            return [Segment(r.start, r.end, r.text) for r in rows]

    @staticmethod
    def checkpoint_of(job: Job) -> Checkpoint:
        return Checkpoint(job.processed_seconds, tuple(json.loads(job.prompt)), job.language)

    def finished_twin(self, job: Job) -> Job | None:
        """An earlier job with the same content whose transcript can be reused."""
        with reading(self.engine) as session:
            return session.exec(
                select(Job)
                .where(Job.sha256 == job.sha256, Job.status == JobStatus.DONE, Job.id != job.id)
                .order_by(col(Job.id).desc())
                .limit(1)
            ).first()

    def jobs(self, limit: int = 50) -> list[Job]:
        with reading(self.engine) as session:
            return list(session.exec(select(Job).order_by(col(Job.id).desc()).limit(limit)).all())

    @staticmethod
    def _latest_for_path(session: Session, path: Path) -> Job | None:
        return session.exec(
            select(Job).where(Job.path == str(path)).order_by(col(Job.id).desc()).limit(1)
        ).first()

    def _free_srt_path(self, session: Session, path: Path) -> str:
        """outbox/<name>.srt, or 'name (2).srt' … when another input already owns that name.

        The name is one path component built from the input's own name, so it cannot point
        outside the outbox; a long stem is cut so the whole name fits in NAME_MAX bytes."""
        n = 1
        while True:
            suffix = ".srt" if n == 1 else f" ({n}).srt"
            stem = path.stem.encode()[: NAME_MAX - len(suffix.encode())].decode("utf-8", "ignore")
            candidate = str((self.outbox / (stem + suffix)).absolute())
            owner = session.exec(select(Job.id).where(Job.srt_path == candidate).limit(1)).first()
            if owner is None:
                return candidate
            n += 1


def _reset_progress(session: Session, job: Job) -> None:
    session.exec(delete(SegmentRow).where(col(SegmentRow.job_id) == job.id))  # type: ignore[call-overload]
    job.processed_seconds = job.progress = job.resumed_from = 0.0
    job.prompt, job.language, job.rtf, job.crashes = "[]", None, None, 0
    session.add(job)
