"""The queue's tables, one SQLModel schema for SQLite and PostgreSQL. Changes to it go through a
migration (daemon/queue/db/migrations/versions), which both backends run at start-up."""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Any

from sqlalchemy import TIMESTAMP, BigInteger, Column, Index, LargeBinary, String, UniqueConstraint, text
from sqlalchemy import Enum as SAEnum
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine
from sqlmodel import Field, SQLModel


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    DUPLICATE = "duplicate"  # same content and settings as a done job: rendered from its segments
    SUPERSEDED = "superseded"  # the file changed again before this version of it was transcribed


class WorkerState(str, Enum):
    IDLE = "idle"
    BUSY = "busy"
    PAUSED = "paused"  # memory pressure: waiting, model kept, checkpoint saved
    BACKOFF = "backoff"  # throttling: waiting between windows


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes: `timestamptz` on PostgreSQL; ISO 8601 text on SQLite, readable
    from the sqlite3 shell (and ordered as text, since every value is UTC to the millisecond)."""

    impl = String(32)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(TIMESTAMP(timezone=True))
        return dialect.type_descriptor(String(32))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> str | datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: timestamps must be timezone-aware UTC")
        value = value.astimezone(timezone.utc)
        return value if dialect.name == "postgresql" else value.isoformat(timespec="milliseconds")

    def process_result_value(self, value: str | datetime | None, dialect: Dialect) -> datetime | None:
        if value is None or isinstance(value, datetime):
            return value
        return datetime.fromisoformat(value)


def _enum_column(enum: type[Enum], default: Enum, name: str) -> Any:
    # Store the enum's values ('queued'), not its names, and let the database reject any other.
    return Column(
        SAEnum(enum, values_callable=lambda e: [m.value for m in e], native_enum=False,
               create_constraint=True, length=16, name=name),
        nullable=False, index=True, default=default,
    )


# One running job per content: a second worker that claims a copy of what another is transcribing
# at the same moment fails to commit and claims something else (the copy waits, then becomes a
# duplicate). SQLite's single writer never gets that far; PostgreSQL's concurrent claims can.
RUNNING_CONTENT = "status = 'running' AND sha256 <> ''"


class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_one_running_per_content", "sha256", unique=True,
                            sqlite_where=text(RUNNING_CONTENT), postgresql_where=text(RUNNING_CONTENT)),)

    id: int | None = Field(default=None, primary_key=True)
    # inputs.canonical(), relative to the inbox for a file inside it (machines that mount a shared
    # inbox at different places agree on it), absolute for one queued from elsewhere.
    path: str = Field(index=True)
    sha256: str = Field(index=True)  # "" until the worker has read the file (a refused file)
    size: int = Field(sa_type=BigInteger)
    mtime_ns: int = Field(sa_type=BigInteger)  # past 2**31 since 1970: PostgreSQL's `integer` is 32 bits
    status: JobStatus = Field(default=JobStatus.QUEUED, sa_column=_enum_column(JobStatus, JobStatus.QUEUED, "job_status"))
    error: str | None = None
    attempts: int = 0
    # Worker deaths in a row while holding this job without finishing a window: a file that kills
    # the worker (a decoder crash) fails after max_attempts of them; a crash after progress does
    # not count, so random crashes during a long job cannot fail it. Claims take these jobs last.
    crashes: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    resumed_from: float = Field(default=0.0, sa_column_kwargs={"server_default": "0"})  # processed_seconds at claim
    # Who holds a running job, and until when (the database's clock): the holder renews the lease
    # from a heartbeat thread; once it has expired, any worker may put the job back in the queue.
    holder: str | None = Field(default=None, index=True)
    lease_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Storage trouble (disk full, a share gone) while this job was read or written, in a row: the
    # job waits until retry_at (the database's clock, longer each time) behind the jobs that had
    # none, so that one stuck job never holds the others up. `error` says why it waits.
    storage_errors: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    retry_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    audio_seconds: float | None = None  # estimated from the container until the job is done
    # What the file's header announced, when its audio ended well before that (a download that
    # stopped): the transcript has what there was, and `status` and the JSON output say so.
    announced_seconds: float | None = None
    processed_seconds: float = 0.0  # audio finished and checkpointed; a restart resumes here
    progress: float = 0.0  # processed_seconds / audio_seconds, 0.0 to 1.0
    rtf: float | None = None
    language: str | None = None  # the language transcribed: forced by the settings, or detected
    # JSON: what the job's folder settings (folders.py) asked for when it was queued. NULL: not
    # looked up yet (a refused file, a retried job).
    asked: str | None = None
    # JSON: the complete settings the checkpoint and the transcript were made with (`asked`, and the
    # worker's own settings for the rest); NULL until a worker starts the job.
    settings: str | None = None
    prompt: str = "[]"  # JSON token list carried into the next window, part of the checkpoint
    model: str | None = None  # the model and number format of the checkpoint, then of the transcript
    precision: str | None = None  # fp32, fp16 or bf16
    duplicate_of: int | None = Field(default=None, foreign_key="jobs.id")
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class SegmentRow(SQLModel, table=True):
    """A finished segment, committed with the checkpoint of the window that produced it."""

    __tablename__ = "segments"
    __table_args__ = (UniqueConstraint("job_id", "seq"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", index=True)
    seq: int  # order within the job
    start: float
    end: float
    text: str
    # JSON [[start, end, text, probability], …]: the segment's words (queue.py); "[]" for segments
    # stored before word timing existed.
    words: str = Field(default="[]", sa_column_kwargs={"server_default": "[]"})


class VoiceRow(SQLModel, table=True):
    """A voice print of a job's recording (engine/speakers), kept so that its speaker labels are made
    again without the audio: by a duplicate of it, or after a stop between the prints and the files."""

    __tablename__ = "voices"
    __table_args__ = (UniqueConstraint("job_id", "seq"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", index=True)
    seq: int  # order within the job: time order
    start: float
    end: float
    vector: bytes = Field(sa_type=LargeBinary)  # 192 float32 numbers, little-endian (768 bytes)


class OutputRow(SQLModel, table=True):
    """A file written for a job, one row per format. Chosen when the transcript is written, from the
    worker's outbox, never at enqueue; recorded just before the file is written."""

    __tablename__ = "outputs"

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", index=True)
    format: str  # formats.FORMATS: srt, vtt, txt, json, tsv
    path: str
    key: str = Field(index=True)  # path as a case- and normalisation-blind file system sees it (outputs.output_key)
    # What was written there: a file with other bytes is not ours to replace. None: written before
    # hashes were kept (schema version 0).
    sha256: str | None = None


class OutputName(SQLModel, table=True):
    """Which input an output name belongs to, for good: the unique key is what stops two workers
    from giving one name to two inputs at the same moment (queue/names.py)."""

    __tablename__ = "output_names"

    key: str = Field(primary_key=True)  # outputs.key: the name as a case- and normalisation-blind file system sees it
    input: str  # jobs.path of the input whose transcript has this name


class WorkerRow(SQLModel, table=True):
    """One row per worker, kept fresh by its heartbeat. `id` is the worker's holder name on jobs."""

    __tablename__ = "workers"

    id: str = Field(primary_key=True)
    pid: int  # for people reading `status`; nothing is decided by it (pids are reused after a reboot)
    host: str
    state: WorkerState = Field(default=WorkerState.IDLE,
                               sa_column=_enum_column(WorkerState, WorkerState.IDLE, "worker_state"))
    reason: str | None = None
    model: str | None = None
    precision: str | None = None
    rss_mb: float | None = None
    current_job_id: int | None = Field(default=None, foreign_key="jobs.id")
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    heartbeat_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class LockRow(SQLModel, table=True):
    """The heartbeat of a lock held for a process's life on PostgreSQL (the active watcher's:
    queue/standby.py), by the server's clock. The lock itself is an advisory lock on the holder's own
    session; this row lets the other machines tell a holder that is frozen or cut off (whose session
    the server still thinks alive) from a live one, and end its session. Unused on SQLite, where the
    lock is a file lock on the one machine (sqlite.try_lock)."""

    __tablename__ = "locks"

    name: str = Field(primary_key=True)
    session_pid: int  # the holder's server process (pg_backend_pid()): the session a standby may end
    host: str  # for people reading the table, as `pid`
    pid: int
    since: datetime = Field(sa_type=UTCDateTime)
    heartbeat_at: datetime = Field(sa_type=UTCDateTime)  # the server's now() at the holder's last renewal


class DeliveryRow(SQLModel, table=True):
    """An announcement of a finished job not sent yet (a notification, the on_done command, the
    webhook: `kind`), added in the transaction that finishes the job, taken (deleted) just before it
    is sent: a worker killed in between sends it when it starts again, and none is sent twice."""

    __tablename__ = "deliveries"

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="jobs.id", index=True)
    kind: str  # formats/delivery.py: notify, command, webhook
    worker: str = Field(index=True)  # the worker (slot name) whose settings say where it goes
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
