"""SQLite, the embedded default: everything SQLite-specific (pragmas, `BEGIN IMMEDIATE`, the file
path, WAL checkpoints, its error codes, the upgrade of databases made before migrations existed)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import sqlite3
import urllib.parse
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Dialect, Engine, Table, event, func
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.schema import CreateIndex, CreateTable
from sqlmodel import SQLModel, create_engine

from daemon.files.outputs import output_key
from daemon.queue.db.errors import SchemaMismatch

BUSY_TIMEOUT_MS = 30_000
# Pragmas applied to every connection; tests read them back.
PRAGMAS = {"journal_mode": "wal", "busy_timeout": BUSY_TIMEOUT_MS, "synchronous": 1, "foreign_keys": 1}
READ_PRAGMAS = {"busy_timeout": BUSY_TIMEOUT_MS, "query_only": 1}  # `status`: reading must not disturb
# PRAGMA user_version of the hand-made schemas (0 is the unversioned one of the first releases).
# Version 2 is migration 0001; Alembic's revisions carry on from there.
SCHEMA_VERSION = 2
LEGACY_REVISION = "0001"
# After a checkpoint lets the WAL start over, SQLite truncates the file to this size; without it the
# WAL keeps its high-water size for good (readers that hold checkpoints back can make that large).
WAL_SIZE_LIMIT_BYTES = 4 << 20
# Primary SQLite result codes that mean "cannot write now" (disk full, I/O error, read-only or
# vanished file, a lock held past busy_timeout): the job is fine, the storage is not.
_STORAGE_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_READONLY,
                            sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN})


def engine(db_path: Path) -> Engine:
    """The queue database with WAL, busy_timeout and synchronous=NORMAL, created if missing; a
    database of the hand-made schemas is first brought to schema 2 (see adopt_legacy)."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    if not db_path.exists():
        # Owner-only: transcripts and file names are private.
        os.close(os.open(db_path, os.O_CREAT | os.O_WRONLY, 0o600))
    made = _engine(f"sqlite:///{db_path}", PRAGMAS | {"journal_size_limit": WAL_SIZE_LIMIT_BYTES})
    adopt_legacy(made)
    return made


def readonly_engine(db_path: Path) -> Engine:
    """For `status` and other readers: never takes the write lock, never changes the schema."""
    if not db_path.exists():
        raise FileNotFoundError(f"no queue database at {db_path} yet: start the daemon with `whisper-daemon run`")
    url = f"file:{urllib.parse.quote(str(db_path.absolute()))}?mode=ro"
    return _engine("sqlite://", READ_PRAGMAS, creator=lambda: sqlite3.connect(
        url, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False))


def clock(seconds: float) -> ColumnElement[Any]:
    """The time `seconds` from now as schema.UTCDateTime stores it on SQLite (ISO 8601, UTC, to the
    millisecond), so that it compares with the stored times as text."""
    return func.strftime("%Y-%m-%dT%H:%M:%f+00:00", "now", f"{seconds:+.3f} seconds")


def begin_migration(conn: Any) -> None:
    """Nothing more to lock: the migration's transaction began with BEGIN IMMEDIATE (the write lock)."""


def slots_dir(db_path: Path) -> Path:
    """Where this machine's workers of this queue keep their slots (registry.take_slot): beside it."""
    return db_path.with_name(db_path.name + ".workers")


class FileLock:
    """A lock held by this process for as long as it lives (or until release()): on SQLite every
    process of the queue is on this machine, so a file lock beside the database will do.

    The kernel frees it the moment its holder dies, and never before: a holder that is stopped
    (SIGSTOP, Ctrl-Z, a debugger) keeps it, and no standby takes over until it runs again or dies.
    On one machine that is what someone who stopped it asked for (a pause), and a frozen machine
    freezes its standbys with it; PostgreSQL's holders on other machines are judged by a heartbeat
    instead (postgres.AdvisoryLock)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def alive(self) -> bool:
        return True  # the kernel holds it until the process ends

    def check(self, session: Any) -> None:
        """Nothing to check: nobody else can have taken it (see above)."""

    def release(self) -> None:
        os.close(self.fd)


def _lock_file(db_path: Path, name: str) -> Path:
    return db_path.with_name(db_path.name + ".locks") / hashlib.sha256(name.encode()).hexdigest()[:16]


def try_lock(db_path: Path, name: str) -> FileLock | None:
    path = _lock_file(db_path, name)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return FileLock(fd)


def lock_held(db_path: Path, name: str) -> bool:
    """Whether a process holds try_lock's lock: a shared lock is refused while it does. Taken for an
    instant otherwise, which a standby watcher trying then meets as "held" and tries again 2 s later."""
    try:
        fd = os.open(_lock_file(db_path, name), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # and with it the shared lock, if taken
    return False


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


def adopt_legacy(engine: Engine) -> None:
    """Bring a database of the hand-made schemas (before Alembic) up to schema 2, and mark it as
    migration 0001, from which Alembic carries on. A new database, or one Alembic knows, is left alone.

    SQLite cannot change a column's constraints in place, so each table is rebuilt from the
    current model (create, copy the columns both have, drop, rename: SQLite's documented
    procedure) with foreign keys off, under the write lock, so that two processes starting
    together do it once. What moved to another table is read before the rebuild drops it (the
    transcripts versions 0 and 1 kept in `jobs`, now rows of `outputs`). The current model is
    schema 2 and what later migrations add (an index, columns), which they add only if missing."""
    raw = engine.raw_connection()
    db: sqlite3.Connection = raw.driver_connection  # type: ignore[assignment]
    try:
        db.execute("PRAGMA foreign_keys=OFF")  # only outside a transaction; the rebuild drops referenced tables
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            present = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "jobs" in present and "alembic_version" not in present and version < SCHEMA_VERSION:
                srt_outputs = _srt_outputs(db, version)  # before jobs loses them
                for table in SQLModel.metadata.sorted_tables:
                    _rebuild(db, table, engine.dialect, copy=table.name in present and table.name != "workers")
                db.executemany("INSERT INTO outputs (job_id, format, path, key, sha256) VALUES (?, 'srt', ?, ?, ?)",
                               srt_outputs)
                if db.execute("PRAGMA foreign_key_check").fetchall():
                    raise SchemaMismatch("the queue database has rows that point at missing jobs")
            if "jobs" in present and "alembic_version" not in present:
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                db.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
                db.execute("INSERT INTO alembic_version VALUES (?)", (LEGACY_REVISION,))
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


def storage_error(error: BaseException) -> bool:
    """The disk or the database file failed (full, I/O error, read-only), not the job being written."""
    return isinstance(error, sqlite3.Error) and (error.sqlite_errorcode & 0xFF) in _STORAGE_CODES
