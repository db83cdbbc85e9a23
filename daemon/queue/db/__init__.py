"""The queue database: one schema (schema.py), two backends. SQLite (sqlite.py) is the embedded
default; PostgreSQL (postgres.py) is the queue several machines share. `db` settings name either:
a path (or `sqlite:///path`), or a `postgresql://user@host/dbname` URL.

Callers use the functions here; SQL that only one backend speaks stays in its module. Schema
changes are Alembic migrations (migrations/versions), run by connect() under a lock.
"""

from __future__ import annotations

import hashlib
import sqlite3
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import ColumnElement, Engine, make_url, text
from sqlmodel import Session

from daemon.config import DATA_DIR, is_postgres
from daemon.queue.db import sqlite
from daemon.queue.db.errors import LockLost, SchemaMismatch
from daemon.queue.db.schema import (
    DeliveryRow,
    Job,
    JobStatus,
    OutputName,
    OutputRow,
    SegmentRow,
    VoiceRow,
    WorkerRow,
    WorkerState,
    utcnow,
)
from daemon.storage import storage_trouble

__all__ = ["DeliveryRow", "Job", "JobStatus", "LockLost", "OutputName", "OutputRow", "SchemaMismatch", "SegmentRow", "VoiceRow", "WorkerRow", "WorkerState",  # re-exported
           "is_postgres", "utcnow"]

# The newest migration: a reader of another version refuses the database instead of misreading it.
# tests/test_postgres.py checks it against migrations/versions.
HEAD = "0005"
MIGRATIONS = Path(__file__).with_name("migrations")


def _postgres() -> Any:
    from daemon.queue.db import postgres  # psycopg only for a PostgreSQL queue

    return postgres


def describe(db: str | Path) -> str:
    """The database for logs and messages: a path, or a URL without its password."""
    return make_url(str(db)).render_as_string(hide_password=True) if is_postgres(db) else str(db)


def connect(db: str | Path) -> Engine:
    """Open the queue database, creating it or bringing its schema up to date; SchemaMismatch for a
    database of a newer whisper-daemon (a revision this one's migrations do not know)."""
    engine = _postgres().engine(str(db)) if is_postgres(db) else sqlite.engine(Path(db))
    found = version(engine)
    if found != HEAD:
        if found is not None and not _known(found):
            engine.dispose()
            raise _newer(found)
        _migrate(engine)
    return engine


def _known(revision: str) -> bool:
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        return ScriptDirectory(str(MIGRATIONS)).get_revision(revision) is not None
    except CommandError:  # "Can't locate revision"
        return False


def _newer(found: str | None) -> SchemaMismatch:
    return SchemaMismatch(f"the queue database has schema {found}, which this whisper-daemon (schema {HEAD}) does "
                          "not know: a newer whisper-daemon has used it. Upgrade whisper-daemon on this machine")


def connect_readonly(db: str | Path) -> Engine:
    """For `status` and other readers: read-only connections that never change the schema."""
    engine = _postgres().engine(str(db), read_only=True) if is_postgres(db) else sqlite.readonly_engine(Path(db))
    found = version(engine)
    if found != HEAD:
        engine.dispose()
        raise SchemaMismatch(f"the queue database {describe(db)} has schema {found or 'none'}, this whisper-daemon "
                             f"reads {HEAD}: start the watcher or worker of this version once to upgrade it")
    return engine


def version(engine: Engine) -> str | None:
    """The database's Alembic revision; None for a new database (or one older than migrations)."""
    with engine.connect() as conn:
        if engine.dialect.has_table(conn, "alembic_version"):
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return None


def _migrate(engine: Engine) -> None:
    """Run Alembic up to HEAD inside one transaction that holds the backend's migration lock, so
    that two processes (or machines) starting together migrate once."""
    from alembic import command
    from alembic.config import Config

    backend = _postgres() if engine.dialect.name == "postgresql" else sqlite
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect() as conn, conn.execution_options(immediate=True).begin():
        backend.begin_migration(conn)
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    newer = version(engine)
    if newer != HEAD:
        raise _newer(newer)


def storage_error(e: BaseException) -> bool:
    """A read or write failed because of the storage (disk full, I/O error, read-only file; a lost
    share; a lost or restarting PostgreSQL server), not because of the job: wait and try again.
    A job's own errors (a name too long, a folder that refuses writes: daemon/storage.py) are not."""
    if isinstance(e, OSError):
        return storage_trouble(e)
    orig = getattr(e, "orig", e)  # SQLAlchemy wraps the driver's exception
    if isinstance(orig, sqlite3.Error):
        return sqlite.storage_error(orig)
    postgres = sys.modules.get("daemon.queue.db.postgres")  # loaded if this process ever spoke to PostgreSQL
    return postgres is not None and postgres.storage_error(orig)


def shared(engine: Engine) -> bool:
    """Whether several machines may use this queue (PostgreSQL); a SQLite queue is one machine's."""
    return engine.dialect.name == "postgresql"


def database_time(engine: Engine, seconds: float = 0.0) -> ColumnElement[Any]:
    """The database's time, `seconds` from now, as SQL: leases and retry times are judged by one
    clock, the server's, never by each machine's (SQLite's processes share one machine's)."""
    backend = _postgres() if engine.dialect.name == "postgresql" else sqlite
    return backend.clock(seconds)


def checkpoint(engine: Engine) -> None:
    """Between jobs: let SQLite's WAL start over (sqlite.checkpoint); PostgreSQL needs nothing."""
    if engine.dialect.name == "sqlite":
        sqlite.checkpoint(engine)


def slots_dir(db: str | Path) -> Path:
    """Where this machine's workers of this queue keep their slot files (registry.take_slot)."""
    if not is_postgres(db):
        return sqlite.slots_dir(Path(db))
    digest = hashlib.sha256(describe(db).encode()).hexdigest()[:16]
    return DATA_DIR / "workers" / digest


def announce(session: Session) -> None:
    """Tell idle workers that a job may be claimable, once this transaction commits."""
    if session.get_bind().dialect.name == "postgresql":
        _postgres().announce(session)


class Lock(Protocol):
    def alive(self) -> bool:
        """Still held (on PostgreSQL this renews its heartbeat)."""
    def check(self, session: Session) -> None:
        """Inside the caller's write transaction: raise LockLost unless still held."""
    def release(self) -> None: ...


def try_lock(engine: Engine, name: str) -> Lock | None:
    """Take the lock called `name` for this process's life, shared by every machine of the queue
    (PostgreSQL's advisory lock; on SQLite, a file lock beside the database); None if another holds it."""
    if engine.dialect.name == "postgresql":
        return _postgres().try_lock(engine, name)
    return sqlite.try_lock(Path(str(engine.url.database)), name)


def lock_held(db: str | Path, engine: Engine, name: str) -> bool:
    """Whether some process holds the lock `name` (try_lock), asked without keeping it."""
    if engine.dialect.name == "postgresql":
        return _postgres().lock_held(engine, name)
    return sqlite.lock_held(Path(db), name)


class Waiter:
    """An idle worker's wait: on PostgreSQL it ends early when a job is announced (LISTEN)."""

    def __init__(self, engine: Engine) -> None:
        self.listener = _postgres().Listener(engine) if engine.dialect.name == "postgresql" else None

    @property
    def wakes_on_work(self) -> bool:
        return self.listener is not None

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        """True when woken by a notification; False when `seconds` passed or `stop` was set."""
        if self.listener is None:
            stop.wait(seconds)
            return False
        return self.listener.wait(stop, seconds)

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()


@contextmanager
def writing(engine: Engine) -> Iterator[Session]:
    """A write transaction; on SQLite it holds the write lock from its first statement."""
    with Session(engine.execution_options(immediate=True), expire_on_commit=False) as session:
        with session.begin():
            yield session


@contextmanager
def reading(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        with session.begin():
            yield session
