"""PostgreSQL, the shared queue of several machines: everything PostgreSQL-specific (the driver,
the settings of every connection, its error classes, notifications, advisory locks)."""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import timedelta
from typing import Any

import psycopg
from sqlalchemy import ColumnElement, Engine, create_engine, func, literal, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.types import Interval

CHANNEL = "whisper_daemon_jobs"  # NOTIFY: a job may be claimable (queued, put back, or its twin done)
APPLICATION = "whisper-daemon"
# Settings of every connection; tests read them back (SHOW). A lock or an idle transaction held by
# a stalled process must not hold the queue for long; timestamps are shown in UTC in psql.
SETTINGS = {"lock_timeout": "30s", "idle_in_transaction_session_timeout": "1min", "TimeZone": "UTC"}
CONNECT_TIMEOUT_SECONDS = 10
# The connections that hold a lock or listen notice a dead server (or a machine cut off) this fast.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
STOP_CHECK_SECONDS = 0.25  # a listener checks the stop flag this often while it waits
MIGRATION_LOCK = "whisper-daemon schema migration"
# SQLSTATE classes that say the server or its disk failed, not the statement: connection exception,
# insufficient resources (disk full, out of memory, too many connections), operator intervention
# (shutdown, restart, cancel), system error (I/O).
STORAGE_CLASSES = frozenset({"08", "53", "57", "58"})


def url(db: str) -> URL:
    """`postgresql://user@host/db` as SQLAlchemy's URL for psycopg 3 (the bare scheme means psycopg2)."""
    return make_url(db).set(drivername="postgresql+psycopg")


def _options(read_only: bool) -> str:
    settings = SETTINGS | ({"default_transaction_read_only": "on"} if read_only else {})
    return " ".join(f"-c {name}={value}" for name, value in settings.items())


def engine(db: str, *, read_only: bool = False) -> Engine:
    # pre_ping: after a server restart, pooled connections are dead; each is checked when taken.
    return create_engine(url(db), pool_pre_ping=True, connect_args={
        "application_name": APPLICATION, "connect_timeout": CONNECT_TIMEOUT_SECONDS, "options": _options(read_only)})


def _connect(engine: Engine) -> psycopg.Connection[Any]:
    """A connection of its own, outside the pool, for a listener or a lock held for a process's life."""
    conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    return psycopg.connect(conninfo, autocommit=True, application_name=APPLICATION,
                           connect_timeout=CONNECT_TIMEOUT_SECONDS, options=_options(False), **KEEPALIVES)


def _key(name: str) -> int:
    """An advisory lock's 64-bit key for `name` (the same on every machine and every server version)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def clock(seconds: float) -> ColumnElement[Any]:
    """The server's time `seconds` from now (the statement's time, not the transaction's)."""
    return func.statement_timestamp() + literal(timedelta(seconds=seconds), Interval())


def begin_migration(conn: Any) -> None:
    """Two machines starting together: the second waits here, then finds the schema up to date."""
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _key(MIGRATION_LOCK)})


def announce(session: Any) -> None:
    """Wake idle workers when the transaction commits (PostgreSQL delivers NOTIFY then, once)."""
    session.execute(text(f"NOTIFY {CHANNEL}"))


def storage_error(error: BaseException) -> bool:
    if isinstance(error, psycopg.OperationalError | psycopg.InterfaceError):
        return True  # the connection failed or was lost: the server restarted, the network dropped
    sqlstate = getattr(error, "sqlstate", None)
    return isinstance(error, psycopg.Error) and sqlstate is not None and sqlstate[:2] in STORAGE_CLASSES


class AdvisoryLock:
    """A session-level advisory lock, held by its own connection: it ends with the connection, so
    the server frees it when this process dies, or its machine is cut off (keepalives)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def alive(self) -> bool:
        try:
            self.conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def release(self) -> None:
        self.conn.close()


def try_lock(engine: Engine, name: str) -> AdvisoryLock | None:
    conn = _connect(engine)
    if conn.execute("SELECT pg_try_advisory_lock(%s)", (_key(name),)).fetchone() == (True,):
        return AdvisoryLock(conn)
    conn.close()
    return None


def lock_held(engine: Engine, name: str) -> bool:
    """Whether a session of this database holds try_lock's lock (pg_locks: a bigint key is split
    into classid, its high 32 bits, and objid, its low ones)."""
    key = _key(name) & 0xFFFFFFFFFFFFFFFF
    with engine.connect() as conn:
        return bool(conn.execute(text(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND classid::bigint = :high AND objid::bigint = :low)"), {"high": key >> 32, "low": key & 0xFFFFFFFF}
        ).scalar())


class Listener:
    """Waits for NOTIFY on CHANNEL, for a while at most. A lost connection is made again on the next
    wait; meanwhile waits simply time out, and the worker's slow poll finds the work."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.conn: psycopg.Connection[Any] | None = None

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        """Until a notification (True), `seconds` pass or `stop` is set (False)."""
        deadline = time.monotonic() + seconds
        while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
            try:
                if self.conn is None:
                    self.conn = _connect(self.engine)
                    self.conn.execute(f"LISTEN {CHANNEL}")
                if any(True for _ in self.conn.notifies(timeout=min(left, STOP_CHECK_SECONDS), stop_after=1)):
                    return True
            except psycopg.Error:
                self.close()
                stop.wait(min(left, STOP_CHECK_SECONDS * 4))
        return False

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def continue_ids(conn: Any, tables: list[str]) -> None:
    """After rows were copied in with their ids: new rows' ids carry on after the largest."""
    for table in tables:
        conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                          f"COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"))
