"""The job queue: enqueue, claim under a lease, checkpoint, finish (its reads: reads.py). Portable SQL only; what one
backend alone speaks stays in daemon/queue/db.

A running job belongs to the worker named in `holder` until `lease_until`, by the database's clock.
Every write a worker makes for a job (a window, its output name, its end) first locks the job's row
and checks that it still holds it, so a worker that lost its lease (asleep, stalled) can never
overwrite the work of the one that took over, nor a recovery set a finished job back to queued.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Engine, delete, func, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from daemon.files.folders import dumps
from daemon.files.inputs import Fingerprint, as_text, canonical, fingerprint
from daemon.queue.db import (
    DeliveryRow,
    Job,
    JobStatus,
    SegmentRow,
    VoiceRow,
    announce,
    database_time,
    reading,
    shared,
    utcnow,
    writing,
)
from daemon.queue.names import outputs_present, reserve
from daemon.queue.reads import JobReads, words_json
from daemon.transcript import Window

MAX_ATTEMPTS = 3
# A busy worker renews its lease from a heartbeat thread every few seconds (worker.py), whatever
# the job is doing; a job whose lease has run out has lost its worker (killed, or its machine died
# or was cut off) and another worker resumes it from its checkpoint. Short, so that happens soon:
# config.py's lease_seconds, the same default.
LEASE = timedelta(seconds=45)
CLAIM_TRIES = 5  # claims that lost a race for the same content (see claim) before giving up this turn
# Storage trouble with one job: it waits this long before it may be claimed again, doubling with
# each failure in a row, while the jobs behind it go ahead.
RETRY_START_SECONDS = 2.0
RETRY_MAX_SECONDS = 300.0


class OutsideInbox(Exception):
    """A file outside the inbox named for a queue several machines share; the message says what to do."""


class LeaseLost(Exception):
    """This worker no longer holds the job: its lease expired and the job was requeued or taken."""


@dataclass(frozen=True)
class Enqueued:
    job: Job
    created: bool


class JobQueue(JobReads):
    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utcnow, *, lease: timedelta = LEASE,
                 inbox: Path | None = None, fence: Callable[[Session], None] | None = None) -> None:
        """`inbox`: paths inside it are kept relative to it, so that machines that mount a shared inbox
        at different places agree on which file a job is; without it every path is kept absolute.
        `fence`: called inside each transaction that adds a job; it raises (db.LockLost) when this
        process may no longer add jobs (the active watcher's lock, standby.py)."""
        super().__init__(engine)
        self.fence = fence
        self.clock = clock
        self.lease = lease
        self.inbox = None if inbox is None else Path(os.path.realpath(inbox))

    # ------------------------------------------------------------------ paths

    def stored(self, path: Path) -> str:
        """A canonical path as jobs keep it: relative to the inbox for a file inside it."""
        if self.inbox is not None and path.is_relative_to(self.inbox):
            return path.relative_to(self.inbox).as_posix()
        return str(path)

    def location(self, job: Job) -> Path:
        """Where a job's file is on this machine."""
        return Path(job.path) if self.inbox is None else self.inbox / job.path  # an absolute path stays itself

    def adopt_absolute_paths(self) -> int:
        """Make relative the paths of jobs queued inside the inbox before paths were kept relative
        to it (or queued by `enqueue` with no inbox); how many changed."""
        if self.inbox is None:
            return 0
        prefix = f"{self.inbox}{os.sep}"
        with writing(self.engine) as session:
            jobs = session.exec(select(Job).where(col(Job.path).startswith(prefix, autoescape=True))).all()
            for job in jobs:
                job.path = self.stored(Path(job.path))
                session.add(job)
            return len(jobs)

    def unfinished_outside_inbox(self) -> list[Job]:
        """Queued or running jobs for files outside the inbox (absolute paths): only this machine can
        read them, so they may not move to a queue several machines share (see enqueue)."""
        with reading(self.engine) as session:
            jobs = session.exec(select(Job).where(col(Job.status).in_([JobStatus.QUEUED, JobStatus.RUNNING]))).all()
        return [job for job in jobs if Path(job.path).is_absolute()]

    # ------------------------------------------------------------------ adding jobs

    def enqueue(self, path: Path, *, follow_link: bool = False, settings: Mapping[str, str] | None = None,
                arrived: bool = False) -> Enqueued:
        """Queue `path` unless this exact file (same path, same content) is already known.

        Same content under another name is queued too; the worker turns it into a `duplicate`
        rendered from the first transcript's segments instead of running the model again.
        `follow_link`: the user named this file themselves (`enqueue`), so a link is followed;
        links found in the inbox are refused instead. `settings`: its folders' (folders.py), stored
        with the job. `arrived`: the file just appeared at its path (the watcher saw it created or
        moved in). A copy that keeps the mtime (`cp -p`, the Finder, `mv`) has the size and mtime of
        the path's finished job, yet it is the recording copied in again (its transcript may have
        been deleted): it is hashed, and queued again if that job is finished.
        """
        stored = dumps(settings or {})
        path = canonical(path, follow_link=follow_link)
        key = self.stored(path)
        if self.inbox is not None and Path(key).is_absolute() and shared(self.engine):
            # Its path means a file on this machine only; another machine's worker that claimed the
            # job would transcribe whatever lies at that path on its own disk.
            raise OutsideInbox(f"it is outside the inbox ({self.inbox}), and this "
                               "queue is shared by several machines (PostgreSQL): another machine's worker could not "
                               "read it. Copy it into the inbox instead; the watcher queues it from there")
        stat = path.stat()
        with reading(self.engine) as session:
            latest = _latest_for_path(session, key)
        if (not arrived and latest is not None and latest.sha256
                and (latest.size, latest.mtime_ns) == (stat.st_size, stat.st_mtime_ns)):
            return Enqueued(latest, False)  # nobody touched it since we read it: skip hashing
        seen = fingerprint(path)  # outside the transaction: hashing a long video takes seconds
        with writing(self.engine) as session:
            self._fenced(session)
            latest = _latest_for_path(session, key)
            if latest is not None and latest.status == JobStatus.QUEUED:
                changed = latest.sha256 != seen.sha256
                if changed:  # replaced before the worker got to it: transcribe the new content from the start
                    _reset_progress(session, latest)
                # Touched, or synced with the same content: its checkpoint stays. Whether the settings
                # it was made with still hold is the worker's to judge (verify) against `asked`.
                _set_fingerprint(session, latest, seen)
                latest.asked = stored
                announce(session)
                return Enqueued(latest, changed)
            if latest is not None and latest.status == JobStatus.RUNNING and latest.sha256 == seen.sha256:
                return Enqueued(latest, False)
            if (latest is not None and latest.sha256 == seen.sha256
                    and latest.status in (JobStatus.DONE, JobStatus.DUPLICATE) and outputs_present(session, latest)):
                # Same path, same content: the same job, whatever the mtime says (another machine sees
                # it differently, or the file was touched). This machine's view is kept, so that
                # its next rescan need not hash the file again.
                _set_fingerprint(session, latest, seen)
                return Enqueued(latest, False)
            # New, new content (a running job for the old content is superseded when this one is
            # claimed), or the same content copied in again after its transcript was deleted (or
            # after it failed): a new job. Known content is rendered from stored segments, cheaply.
            job = Job(path=key, sha256=seen.sha256, size=seen.size, mtime_ns=seen.mtime_ns, asked=stored,
                      created_at=self.clock())
            session.add(job)
            session.flush()
            announce(session)
            return Enqueued(job, True)

    def reject(self, path: Path, reason: str) -> Enqueued:
        """Record a file that will not be transcribed (unreadable, a link, …) as a `failed` job, so
        `status` says why. Its content is unknown (sha256 ""): the worker reads and checks it again if
        the job is retried.

        A file whose size and mtime are those of its latest job adds nothing: that job already says
        what became of this content (one job per file). It covers rescans of a refused file, and a
        queued file made unreadable (chmod changes neither): the worker fails that job when it
        comes to it, for the same reason."""
        path = canonical(path)
        stat = path.lstat()
        text = Path(as_text(path))
        error = f"{text.name}: {reason}"
        with writing(self.engine) as session:
            self._fenced(session)
            latest = _latest_for_path(session, self.stored(text))
            if latest is not None and (latest.size, latest.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
                return Enqueued(latest, False)
            now = self.clock()
            job = Job(path=self.stored(text), sha256="", size=stat.st_size, mtime_ns=stat.st_mtime_ns, status=JobStatus.FAILED,
                      error=error, created_at=now, finished_at=now)
            session.add(job)
            session.flush()
            return Enqueued(job, True)

    def retry(self, ids: Iterable[int] = (), *, failed: bool = False) -> list[Job]:
        query = select(Job).where(col(Job.status).in_([JobStatus.FAILED, JobStatus.DONE, JobStatus.DUPLICATE]))
        query = query.where(Job.status == JobStatus.FAILED) if failed else query.where(col(Job.id).in_(list(ids)))
        with writing(self.engine) as session:
            jobs = session.exec(query).all()
            for job in jobs:
                job.status, job.attempts, job.error, job.duplicate_of = JobStatus.QUEUED, 0, None, None
                job.asked = job.settings = None  # looked up again when it starts: the user may have fixed the folder's file
                job.storage_errors, job.retry_at, job.announced_seconds = 0, None, None
                job.started_at = job.finished_at = None
                _reset_progress(session, job)
            announce(session)
            return list(jobs)

    # ------------------------------------------------------------------ a worker's side

    def claim(self, holder: str) -> Job | None:
        """Atomically move the oldest claimable job to `running`, held by `holder` under a lease.

        A job whose content is being transcribed right now waits, so that it becomes a
        duplicate of that job rather than a second transcription. Unknown content ("") never waits.

        Workers on PostgreSQL claim concurrently: the row is locked as it is chosen, and rows other
        claims hold are skipped (FOR UPDATE SKIP LOCKED; SQLite's single writer needs neither), then
        its status is checked again as it is updated. Two claims of copies of one content at the same
        moment: the database's one-running-job-per-content index fails the later commit, which then
        claims again.
        """
        busy_content = select(Job.sha256).where(Job.status == JobStatus.RUNNING, Job.sha256 != "")
        due = or_(col(Job.retry_at).is_(None), col(Job.retry_at) <= database_time(self.engine))
        next_id = (
            select(Job.id)
            .where(Job.status == JobStatus.QUEUED, col(Job.sha256).not_in(busy_content), due)
            # A job that just killed a worker, or met storage trouble, waits behind the others.
            .order_by(col(Job.crashes), col(Job.storage_errors), col(Job.id))
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        for _ in range(CLAIM_TRIES):
            stmt = (
                update(Job)
                .where(col(Job.id) == next_id, Job.status == JobStatus.QUEUED)
                .values(status=JobStatus.RUNNING, holder=holder, lease_until=self._lease_end(),
                        attempts=Job.attempts + 1, started_at=self.clock(), finished_at=None, error=None,
                        resumed_from=Job.processed_seconds)
                .returning(Job.id)
            )
            try:
                with writing(self.engine) as session:
                    job_id = session.execute(stmt).scalar_one_or_none()
                    return None if job_id is None else session.get(Job, job_id)
            except IntegrityError:  # another worker claimed the same content meanwhile
                continue
        return None

    def verify(self, job_id: int, holder: str, seen: Fingerprint, model: str, precision: str,
               settings: Mapping[str, str | None]) -> tuple[Job, str | None]:
        """Check a just-claimed job against its file as it is now (`seen`), this worker's model and
        the job's complete `settings`, which are stored with it.

        If a newer job for the same path exists, that one has the file as it is now: this one ends
        `superseded` (check the returned job's status). Otherwise older unfinished jobs for the path
        are superseded by this one, and the checkpoint is discarded if the content changed since it
        was queued, or if it was made with another model, precision or settings; the reason is returned.
        A file that now holds what another worker is transcribing goes back to the queue (status
        `queued`), to be that job's duplicate once it is done."""
        stored = dumps(settings)
        with writing(self.engine) as session:
            job = held(session, job_id, holder)
            newer = session.exec(select(Job.id).where(Job.path == job.path, col(Job.id) > job_id)
                                 .order_by(col(Job.id).desc()).limit(1)).first()
            if newer is not None:
                self._end(job, JobStatus.SUPERSEDED, error=f"the file changed again; job {newer} has it as it is now")
                session.add(job)
                return job, None
            session.execute(
                update(Job).where(Job.path == job.path, col(Job.id) < job_id, Job.status == JobStatus.QUEUED)
                .values(status=JobStatus.SUPERSEDED, finished_at=self.clock(),
                        error=f"the file changed again; job {job_id} has it as it is now"))
            if seen.sha256 != job.sha256 and session.exec(select(Job.id).where(
                    Job.sha256 == seen.sha256, Job.status == JobStatus.RUNNING, col(Job.id) != job_id)).first():
                _reset_progress(session, job)
                _set_fingerprint(session, job, seen)
                job.status, job.holder, job.lease_until = JobStatus.QUEUED, None, None
                job.attempts = max(0, job.attempts - 1)
                return job, None
            reason = None
            if job.sha256 and job.sha256 != seen.sha256:
                reason = "the file changed since it was queued"
            elif (job.model, job.precision) != (model, precision):
                reason = f"its checkpoint was made with {job.model} in {job.precision}, this worker runs {model} in {precision}"
            elif job.settings != stored:
                reason = "its checkpoint was made with other settings"
            if reason is None or not (job.processed_seconds or _has_segments(session, job_id)):
                reason = None  # nothing to discard
            else:
                _reset_progress(session, job)
            if job.sha256 != seen.sha256:  # the same content keeps the (size, mtime) its enqueuer saw (enqueue)
                _set_fingerprint(session, job, seen)
            job.settings = stored
            session.add(job)
            return job, reason

    def finished_twin(self, job: Job, model: str) -> Job | None:
        """An earlier job with the same content, transcribed by `model` with the same settings, whose
        stored segments can be rendered for this one. Unknown content ("") has no twin."""
        if not job.sha256:
            return None
        with reading(self.engine) as session:
            return session.exec(
                select(Job)
                .where(Job.sha256 == job.sha256, Job.status == JobStatus.DONE, Job.model == model,
                       Job.settings == job.settings, Job.id != job.id)
                .order_by(col(Job.id).desc())
                .limit(1)
            ).first()

    def save_window(self, job_id: int, holder: str, window: Window, audio_seconds: float | None, rtf: float,
                    model: str, precision: str) -> None:
        """Commit a window's segments and the checkpoint after it in one transaction; renews the lease."""
        with writing(self.engine) as session:
            job = held(session, job_id, holder)
            seq = session.exec(select(func.count()).where(SegmentRow.job_id == job_id)).one()
            for i, seg in enumerate(window.segments, start=seq):
                session.add(SegmentRow(job_id=job_id, seq=i, start=seg.start, end=seg.end, text=seg.text,
                                       words=words_json(seg.words)))
            job.processed_seconds = window.checkpoint.offset_seconds
            job.prompt = json.dumps(window.checkpoint.prompt)
            job.language = window.checkpoint.language
            job.model, job.precision = model, precision  # what the checkpoint was made with
            job.audio_seconds = max(audio_seconds or 0.0, window.decoded_seconds)
            job.progress = min(1.0, job.processed_seconds / job.audio_seconds) if job.audio_seconds else 0.0
            job.rtf = rtf
            job.storage_errors, job.retry_at = 0, None  # the storage works again
            session.add(job)
            session.flush()
            session.execute(update(Job).where(col(Job.id) == job_id).values(lease_until=self._lease_end()))

    def renew(self, job_id: int, holder: str) -> bool:
        """Extend the lease; False if this worker no longer holds the job."""
        with writing(self.engine) as session:
            result = session.execute(update(Job).where(col(Job.id) == job_id, Job.holder == holder,
                                                       Job.status == JobStatus.RUNNING)
                                     .values(lease_until=self._lease_end()))
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def reserve_outputs(self, job_id: int, holder: str, folder: Path, texts: Mapping[str, str]) -> dict[str, Path]:
        """Choose where this job's files go and record them before they are written (names.reserve)."""
        with writing(self.engine) as session:
            return reserve(session, held(session, job_id, holder), folder, texts)

    def finish(self, job_id: int, holder: str, status: JobStatus, deliveries: Iterable[str] = (),
               **fields: object) -> Job:
        """End a job; `deliveries`: the announcements of it to send (queue/deliveries.py), kept in
        the same transaction, so that a worker killed just after this sends them when it starts."""
        with writing(self.engine) as session:
            job = held(session, job_id, holder)
            self._end(job, status, **fields)
            session.add(job)
            session.add_all(DeliveryRow(job_id=job_id, kind=kind, worker=holder, created_at=self.clock())
                            for kind in deliveries)
            announce(session)  # copies of its content may be claimed now
            return job

    def fail(self, job_id: int, holder: str, error: str) -> Job:
        return self.finish(job_id, holder, JobStatus.FAILED, error=error)

    def release(self, job_id: int, holder: str) -> None:
        """Put a job back because the worker is stopping; the interrupted try does not count."""
        with writing(self.engine) as session:
            job = held(session, job_id, holder)
            job.status, job.holder, job.lease_until = JobStatus.QUEUED, None, None
            job.attempts = max(0, job.attempts - 1)
            session.add(job)
            announce(session)

    def defer(self, job_id: int, holder: str, reason: str) -> float:
        """Put a job back after storage trouble (disk full, a share gone), uncounted, with its
        checkpoint: it may be claimed again only after a wait that doubles with each failure in a
        row, and then after the jobs that had none. `reason` shows in `status` meanwhile. Returns
        the wait in seconds."""
        with writing(self.engine) as session:
            job = held(session, job_id, holder)
            job.storage_errors += 1
            wait = min(RETRY_START_SECONDS * 2 ** (job.storage_errors - 1), RETRY_MAX_SECONDS)
            job.status, job.holder, job.lease_until = JobStatus.QUEUED, None, None
            job.attempts = max(0, job.attempts - 1)
            job.error = f"waiting to try again ({job.storage_errors} time(s) so far): {reason}"
            session.add(job)
            session.flush()
            session.execute(update(Job).where(col(Job.id) == job_id).values(retry_at=database_time(self.engine, wait)))
            announce(session)
            return wait

    def recover(self, holder: str | None = None, max_attempts: int = MAX_ATTEMPTS) -> list[Job]:
        """Requeue running jobs whose lease has expired, and those `holder` held in a previous life
        (this worker, restarted after a crash); give up on files that crashed a worker
        `max_attempts` times in a row without progress."""
        with writing(self.engine) as session:
            lost = or_(col(Job.lease_until).is_(None), col(Job.lease_until) < database_time(self.engine), Job.holder == holder)
            # Locked as they are chosen: a holder finishing its job right now either commits first
            # (the row no longer matches) or waits for this transaction and then finds it lost.
            stuck = session.exec(select(Job).where(Job.status == JobStatus.RUNNING, lost)
                                 .with_for_update(skip_locked=True)).all()
            for job in stuck:
                job.crashes = 0 if job.processed_seconds > job.resumed_from else job.crashes + 1
                job.holder = job.lease_until = None
                if job.crashes >= max_attempts:
                    self._end(job, JobStatus.FAILED, error=(
                        f"the worker stopped unexpectedly {job.crashes} times in a row while transcribing this "
                        f"file (never past {job.processed_seconds:.0f} s of it); giving up (use `retry` to try again)"))
                else:
                    job.status = JobStatus.QUEUED
                session.add(job)
            if stuck:
                announce(session)
            return list(stuck)

    def _fenced(self, session: Session) -> None:
        if self.fence is not None:
            self.fence(session)

    def _lease_end(self) -> ColumnElement[Any]:
        return database_time(self.engine, self.lease.total_seconds())

    def _end(self, job: Job, status: JobStatus, **fields: object) -> None:
        job.status, job.finished_at, job.holder, job.lease_until = status, self.clock(), None, None
        for name, value in fields.items():
            setattr(job, name, value)


def held(session: Session, job_id: int, holder: str) -> Job:
    """The job, its row locked until this transaction ends (PostgreSQL; SQLite's writer holds the
    whole database), if `holder` still holds it."""
    job = session.exec(select(Job).where(col(Job.id) == job_id).with_for_update()).one()
    if job.status != JobStatus.RUNNING or job.holder != holder:
        raise LeaseLost(f"job {job_id} is no longer held by this worker (now {job.status.value})")
    return job


def _latest_for_path(session: Session, key: str) -> Job | None:
    return session.exec(select(Job).where(Job.path == key).order_by(col(Job.id).desc()).limit(1)).first()


def _has_segments(session: Session, job_id: int) -> bool:
    return session.exec(select(SegmentRow.id).where(SegmentRow.job_id == job_id).limit(1)).first() is not None


def _set_fingerprint(session: Session, job: Job, seen: Fingerprint) -> None:
    job.sha256, job.size, job.mtime_ns = seen.sha256, seen.size, seen.mtime_ns
    session.add(job)


def _reset_progress(session: Session, job: Job) -> None:
    session.exec(delete(SegmentRow).where(col(SegmentRow.job_id) == job.id))  # type: ignore[call-overload]
    session.exec(delete(VoiceRow).where(col(VoiceRow.job_id) == job.id))  # type: ignore[call-overload]
    job.processed_seconds = job.progress = job.resumed_from = 0.0
    job.prompt, job.language, job.rtf, job.crashes = "[]", None, None, 0
    session.add(job)
