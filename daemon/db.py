"""SQLite schema and connections: the only module that knows the database is SQLite.

Everything SQLite-specific (pragmas, `BEGIN IMMEDIATE`, the file path URL, schema upgrades by
table rebuild) lives here, so a PostgreSQL backend only has to replace `connect()`, the begin
hook and `_upgrade`.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Dialect, Engine, String, Table, UniqueConstraint, event
from sqlalchemy import Enum as SAEnum
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, Session, SQLModel, create_engine

from daemon.outputs import output_key

BUSY_TIMEOUT_MS = 30_000
# Pragmas applied to every connection; tests read them back.
PRAGMAS = {"journal_mode": "wal", "busy_timeout": BUSY_TIMEOUT_MS, "synchronous": 1, "foreign_keys": 1}
READ_PRAGMAS = {"busy_timeout": BUSY_TIMEOUT_MS, "query_only": 1}  # `status`: reading must not disturb
SCHEMA_VERSION = 2  # PRAGMA user_version; 0 is the unversioned schema of the first releases
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
    path: str = Field(index=True)  # inputs.canonical(): one spelling per file
    sha256: str = Field(index=True)  # "" until the worker has read the file (a refused file)
    size: int
    mtime_ns: int
    status: JobStatus = Field(default=JobStatus.QUEUED, sa_column=_enum_column(JobStatus, JobStatus.QUEUED, "job_status"))
    error: str | None = None
    attempts: int = 0
    # Worker deaths in a row while holding this job without finishing a window: a file that kills
    # the worker (a decoder crash) fails after max_attempts of them; a crash after progress does
    # not count, so random crashes during a long job cannot fail it. Claims take these jobs last.
    crashes: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    resumed_from: float = Field(default=0.0, sa_column_kwargs={"server_default": "0"})  # processed_seconds at claim
    # Who holds a running job, and until when: the holder renews the lease with every window; once it
    # has expired, any worker may put the job back in the queue.
    holder: str | None = Field(default=None, index=True)
    lease_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    audio_seconds: float | None = None  # estimated from the container until the job is done
    processed_seconds: float = 0.0  # audio finished and checkpointed; a restart resumes here
    progress: float = 0.0  # processed_seconds / audio_seconds, 0.0 to 1.0
    rtf: float | None = None
    language: str | None = None  # the language transcribed: forced by the settings, or detected
    # JSON: what the job's folder settings (folders.py) asked for when it was queued, completed with
    # the worker's own settings when it starts. NULL: not looked up yet (a refused file, a retried job).
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


def connect(db_path: Path) -> Engine:
    """Open (create or upgrade) the queue database with WAL, busy_timeout and synchronous=NORMAL."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    if not db_path.exists():
        # Owner-only: transcripts and file names are private.
        os.close(os.open(db_path, os.O_CREAT | os.O_WRONLY, 0o600))
    engine = _engine(f"sqlite:///{db_path}", PRAGMAS | {"journal_size_limit": WAL_SIZE_LIMIT_BYTES})
    _upgrade(engine)
    return engine


def connect_readonly(db_path: Path) -> Engine:
    """For `status` and other readers: never takes the write lock, never changes the schema."""
    url = f"file:{urllib.parse.quote(str(db_path.absolute()))}?mode=ro"
    engine = _engine("sqlite://", READ_PRAGMAS, creator=lambda: sqlite3.connect(
        url, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False))
    with engine.connect() as conn:
        version = conn.exec_driver_sql("PRAGMA user_version").scalar()
    if version != SCHEMA_VERSION:
        engine.dispose()
        raise SchemaMismatch(f"the queue database {db_path} has schema version {version}, this whisper-daemon reads "
                             f"version {SCHEMA_VERSION}: start the watcher or worker of this version once to upgrade it")
    return engine


def slots_dir(db_path: Path) -> Path:
    """Where this machine's workers of this queue keep their slots (registry.take_slot): beside it."""
    return db_path.with_name(db_path.name + ".workers")


class SchemaMismatch(Exception):
    """A reader met a database of another version; the message says what to do."""


def _engine(url: str, pragmas: dict[str, object], **kwargs: Any) -> Engine:
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
                           **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Autocommit at the driver level so the begin hook below owns transaction start.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        for name, value in pragmas.items():
            cursor.execute(f"PRAGMA {name}={value}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the write lock up front: a deferred transaction that later upgrades
        # to a writer fails with "database is locked" instead of waiting on busy_timeout.
        immediate = conn.get_execution_options().get("immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _upgrade(engine: Engine) -> None:
    """Create the tables, or bring a database made by an older version up to SCHEMA_VERSION.

    SQLite cannot change a column's constraints in place, so each table is rebuilt from the
    current model (create, copy the columns both have, drop, rename: SQLite's documented
    procedure) with foreign keys off, under the write lock, so that two processes starting
    together do it once. What moved to another table is read before the rebuild drops it (the
    transcripts versions 0 and 1 kept in `jobs`, now rows of `outputs`)."""
    raw = engine.raw_connection()
    db: sqlite3.Connection = raw.driver_connection  # type: ignore[assignment]
    try:
        db.execute("PRAGMA foreign_keys=OFF")  # only outside a transaction; the rebuild drops referenced tables
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SchemaMismatch(f"the queue database has schema version {version}, newer than this "
                                     f"whisper-daemon's {SCHEMA_VERSION}: upgrade whisper-daemon")
            if version < SCHEMA_VERSION:
                present = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                srt_outputs = _srt_outputs(db, version) if "jobs" in present else []  # before jobs loses them
                for table in SQLModel.metadata.sorted_tables:
                    _rebuild(db, table, engine.dialect, copy=table.name in present and table.name != "workers")
                db.executemany("INSERT INTO outputs (job_id, format, path, key, sha256) VALUES (?, 'srt', ?, ?, ?)",
                               srt_outputs)
                if db.execute("PRAGMA foreign_key_check").fetchall():
                    raise SchemaMismatch("the queue database has rows that point at missing jobs")
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        finally:
            db.execute("PRAGMA foreign_keys=ON")
    finally:
        raw.close()


def _rebuild(db: sqlite3.Connection, table: Table, dialect: Dialect, copy: bool) -> None:
    name = table.name
    ddl = str(CreateTable(table).compile(dialect=dialect)).strip()
    if copy:
        old = [row[1] for row in db.execute(f"PRAGMA table_info({name})")]
        common = ", ".join(c.name for c in table.columns if c.name in old)
        # Only the new table's own name changes; its references (to `jobs`) are right after the rename.
        db.execute(ddl.replace(f"CREATE TABLE {name} ", f"CREATE TABLE _new_{name} ", 1))
        db.execute(f"INSERT INTO _new_{name} ({common}) SELECT {common} FROM {name}")
        db.execute(f"DROP TABLE {name}")
        db.execute(f"ALTER TABLE _new_{name} RENAME TO {name}")
    else:  # a new table, or one whose rows describe processes of the old version (workers)
        db.execute(f"DROP TABLE IF EXISTS {name}")
        db.execute(ddl)
    for index in table.indexes:
        db.execute(str(CreateIndex(index).compile(dialect=dialect)))


def _srt_outputs(db: sqlite3.Connection, version: int) -> list[tuple[int, str, str, str | None]]:
    """Versions 0 and 1 wrote one SRT per job, kept in jobs.srt_path (and, in version 1, srt_sha256):
    (job id, path, key, sha256) for `outputs`. Version 0 named the file at enqueue time; names are
    now chosen when written, so its unfinished jobs have none yet. Keys are computed again, by
    today's output_key, as the new rows will be compared with."""
    if version >= 2:
        return []
    columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    sha256 = "srt_sha256" if "srt_sha256" in columns else "NULL"
    unfinished = "AND status NOT IN ('queued', 'running')" if version == 0 else ""
    found = db.execute(f"SELECT id, srt_path, {sha256} FROM jobs WHERE srt_path IS NOT NULL {unfinished} ORDER BY id")
    return [(job_id, path, output_key(Path(path)), digest) for job_id, path, digest in found.fetchall()]


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
