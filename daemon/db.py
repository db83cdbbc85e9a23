"""SQLite schema and connections: the only module that knows the database is SQLite.

Everything SQLite-specific (pragmas, `BEGIN IMMEDIATE`, the file path URL) lives here, so a
PostgreSQL backend only has to replace `connect()` and the begin hook.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Connection, Engine, String, UniqueConstraint, event
from sqlalchemy import Enum as SAEnum
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.schema import CreateColumn
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, Session, SQLModel, create_engine

BUSY_TIMEOUT_MS = 30_000
# Pragmas applied to every connection; tests read them back.
PRAGMAS = {"journal_mode": "wal", "busy_timeout": BUSY_TIMEOUT_MS, "synchronous": 1, "foreign_keys": 1}
# After a checkpoint lets the WAL start over, SQLite truncates the file to this size; without it the
# WAL keeps its high-water size for good (readers that hold checkpoints back can make that large).
WAL_SIZE_LIMIT_BYTES = 4 << 20
# Primary SQLite result codes that mean "cannot write now" (disk full, I/O error, read-only or
# vanished file, a lock held past busy_timeout): the job is fine, the storage is not.
_STORAGE_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_READONLY,
                            sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN})


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    DUPLICATE = "duplicate"


class WorkerState(str, Enum):
    IDLE = "idle"
    BUSY = "busy"
    PAUSED = "paused"  # memory pressure: waiting, model kept, checkpoint saved
    BACKOFF = "backoff"  # throttling: waiting between windows


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes stored as ISO 8601 text, readable from the sqlite3 shell."""

    impl = String(32)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> str | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: timestamps must be timezone-aware UTC")
        return value.astimezone(timezone.utc).isoformat(timespec="milliseconds")

    def process_result_value(self, value: str | None, dialect: Any) -> datetime | None:
        return None if value is None else datetime.fromisoformat(value)


def _enum_column(enum: type[Enum], default: Enum, name: str) -> Any:
    # Store the enum's values ('queued'), not its names, and let the database reject any other.
    return Column(
        SAEnum(enum, values_callable=lambda e: [m.value for m in e], native_enum=False,
               create_constraint=True, length=16, name=name),
        nullable=False, index=True, default=default,
    )


class Job(SQLModel, table=True):
    __tablename__ = "jobs"

    id: int | None = Field(default=None, primary_key=True)
    path: str = Field(index=True)
    sha256: str = Field(index=True)
    size: int
    mtime_ns: int
    status: JobStatus = Field(default=JobStatus.QUEUED, sa_column=_enum_column(JobStatus, JobStatus.QUEUED, "job_status"))
    srt_path: str
    error: str | None = None
    attempts: int = 0
    # Worker deaths in a row while holding this job without finishing a window: a file that kills
    # the worker (a decoder crash) fails after max_attempts of them; a crash after progress does
    # not count, so random crashes during a long job cannot fail it. Claims take these jobs last.
    crashes: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    resumed_from: float = Field(default=0.0, sa_column_kwargs={"server_default": "0"})  # processed_seconds at claim
    audio_seconds: float | None = None  # estimated from the container until the job is done
    processed_seconds: float = 0.0  # audio finished and checkpointed; a restart resumes here
    progress: float = 0.0  # processed_seconds / audio_seconds, 0.0 to 1.0
    rtf: float | None = None
    language: str | None = None
    prompt: str = "[]"  # JSON token list carried into the next window, part of the checkpoint
    model: str | None = None
    precision: str | None = None  # fp32, fp16 or bf16: what the resident model computed in
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


class WorkerRow(SQLModel, table=True):
    """One row per worker process, kept fresh by its heartbeat."""

    __tablename__ = "workers"

    pid: int = Field(primary_key=True)
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


def connect(db_path: Path) -> Engine:
    """Open (and create) the queue database with WAL, busy_timeout and synchronous=NORMAL."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    if not db_path.exists():
        # Owner-only: transcripts and file names are private.
        os.close(os.open(db_path, os.O_CREAT | os.O_WRONLY, 0o600))
    engine = create_engine(
        f"sqlite:///{db_path}",
        connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Autocommit at the driver level so the begin hook below owns transaction start.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        for name, value in PRAGMAS.items():
            cursor.execute(f"PRAGMA {name}={value}")
        cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the write lock up front: a deferred transaction that later upgrades
        # to a writer fails with "database is locked" instead of waiting on busy_timeout.
        immediate = conn.get_execution_options().get("immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    # Under the write lock, so two processes starting together don't both create tables.
    with engine.execution_options(immediate=True).begin() as conn:
        SQLModel.metadata.create_all(conn)
        _add_missing_columns(conn)
    return engine


def _add_missing_columns(conn: Connection) -> None:
    """A database made by an older version lacks newer columns: add them, with their defaults."""
    for table in SQLModel.metadata.sorted_tables:
        present = {row[1] for row in conn.exec_driver_sql(f"PRAGMA table_info({table.name})")}
        for column in table.columns:
            if column.name not in present:
                ddl = CreateColumn(column).compile(dialect=conn.dialect)
                conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {ddl}")


def checkpoint(engine: Engine) -> None:
    """Copy the WAL back into the database so the next write starts it over (and truncates it to
    WAL_SIZE_LIMIT_BYTES). PASSIVE: it never waits for readers, so `sqlite3` sessions cannot stall us."""
    try:
        conn = engine.raw_connection()  # outside any transaction: a checkpoint cannot run inside one
        try:
            conn.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")  # type: ignore[union-attr]
        finally:
            conn.close()
    except (sqlite3.Error, SQLAlchemyError):
        pass  # e.g. disk full: harmless, SQLite's own autocheckpoint tries again after later writes


def storage_error(e: BaseException) -> bool:
    """A write failed because of the disk or the database file (full, I/O error, read-only), not
    because of the job being written: the thing to do is wait and try again."""
    if isinstance(e, OSError):
        return True
    orig = getattr(e, "orig", None)  # SQLAlchemy wraps the driver's exception
    return isinstance(orig, sqlite3.Error) and (orig.sqlite_errorcode & 0xFF) in _STORAGE_CODES


@contextmanager
def writing(engine: Engine) -> Iterator[Session]:
    """A write transaction that holds the write lock from its first statement."""
    with Session(engine.execution_options(immediate=True), expire_on_commit=False) as session:
        with session.begin():
            yield session


@contextmanager
def reading(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        with session.begin():
            yield session
