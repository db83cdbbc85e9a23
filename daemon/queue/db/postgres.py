"""PostgreSQL, the shared queue of several machines: everything PostgreSQL-specific (the driver,
the settings of every connection, its error classes, notifications, advisory locks)."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from datetime import timedelta
from typing import Any

import psycopg
from sqlalchemy import ColumnElement, Engine, create_engine, func, literal, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.types import Interval

from daemon.queue.db.errors import LockLost

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
# A lock holder renews its heartbeat every standby.LOCK_CHECK_SECONDS (3 s); one that missed five
# renewals in a row is frozen or cut off, and a standby ends its session. With the standby's 2 s
# between tries, a frozen holder is replaced within about 17 s.
LOCK_STALE_SECONDS = 15.0
TERMINATE_WAIT_MS = 5000  # how long pg_terminate_backend waits for the ended session to go (and free the lock)
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
    """A session-level advisory lock, held by its own connection, with a heartbeat row (schema.LockRow).

    The server frees the lock when the session ends: at once when the holder's process dies. But a
    process that is stopped (SIGSTOP, a debugger) or a machine that froze or lost its network keeps
    the session open in the server's eyes (a stopped process's kernel still answers TCP keepalives;
    an unplugged machine's session lasts until the server's keepalives give up, two hours by
    default). So the holder renews its row's heartbeat, by the server's clock, and a standby that
    finds it older than LOCK_STALE_SECONDS ends the holder's session (pg_terminate_backend), which
    frees the lock. The holder, once it runs again, finds its session gone and stands by."""

    def __init__(self, conn: psycopg.Connection[Any], name: str) -> None:
        self.conn = conn
        self.name = name
        self.session_pid = conn.info.backend_pid

    def alive(self) -> bool:
        """Renew the heartbeat; False if this session no longer holds the lock."""
        try:
            renewed = self.conn.execute("UPDATE locks SET heartbeat_at = now() WHERE name = %s AND session_pid = %s",
                                        (self.name, self.session_pid))
            return renewed.rowcount == 1
        except psycopg.Error:
            return False

    def check(self, session: Any) -> None:
        """Inside the caller's transaction: raise LockLost unless this session still holds the lock, so
        that a holder that was frozen while a standby took over cannot write once it runs again."""
        held = session.execute(text(f"SELECT 1 FROM pg_locks l WHERE {_held(':high', ':low')} AND l.pid = :pid"),
                               {**_lock_ids(self.name), "pid": self.session_pid}).first()
        if held is None:
            raise LockLost(f"{self.name}: another process holds the lock now")

    def release(self) -> None:
        self.conn.close()


def _held(high: str, low: str) -> str:
    """SQL: row `l` of pg_locks is a granted advisory lock on the bigint key whose high and low 32 bits
    are the parameters `high` and `low` (written in the driver's style)."""
    return f"l.locktype = 'advisory' AND l.granted AND l.classid = {high} AND l.objid = {low} AND l.objsubid = 1"


def _lock_ids(name: str) -> dict[str, int]:
    key = _key(name) & 0xFFFFFFFFFFFFFFFF
    return {"high": key >> 32, "low": key & 0xFFFFFFFF}


def try_lock(engine: Engine, name: str) -> AdvisoryLock | None:
    """The lock, with its heartbeat row; None if a live process holds it. A holder whose heartbeat
    is stale has its session ended here first (AdvisoryLock)."""
    conn = _connect(engine)
    try:
        if not _try(conn, name) and not (_end_stale_holder(conn, name) and _try(conn, name)):
            conn.close()
            return None
        conn.execute("INSERT INTO locks (name, session_pid, host, pid, since, heartbeat_at) "
                     "VALUES (%s, pg_backend_pid(), %s, %s, now(), now()) ON CONFLICT (name) DO UPDATE SET "
                     "session_pid = excluded.session_pid, host = excluded.host, pid = excluded.pid, "
                     "since = excluded.since, heartbeat_at = excluded.heartbeat_at",
                     (name, socket.gethostname(), os.getpid()))
        return AdvisoryLock(conn, name)
    except BaseException:
        conn.close()
        raise


def _try(conn: psycopg.Connection[Any], name: str) -> bool:
    return conn.execute("SELECT pg_try_advisory_lock(%s)", (_key(name),)).fetchone() == (True,)


def _end_stale_holder(conn: psycopg.Connection[Any], name: str) -> bool:
    """End the session that holds `name` if its heartbeat is older than LOCK_STALE_SECONDS; whether
    one was ended. Only a session that both holds the lock and is the one its row names: a new holder
    that has not written its row yet is never taken for the old one."""
    ids = _lock_ids(name)
    try:
        ended = conn.execute(
            "SELECT pg_terminate_backend(h.session_pid, %(wait_ms)s) FROM locks h JOIN pg_locks l ON l.pid = h.session_pid "
            "WHERE h.name = %(name)s AND h.heartbeat_at < now() - make_interval(secs => %(stale)s) AND "
            + _held("%(high)s", "%(low)s"),
            {**ids, "name": name, "stale": LOCK_STALE_SECONDS, "wait_ms": TERMINATE_WAIT_MS}).fetchall()
    except psycopg.errors.InsufficientPrivilege as e:
        raise LockLost(f"{name}: its holder's heartbeat is more than {LOCK_STALE_SECONDS:g} s old, but this "
                       f"machine may not end its session ({e.diag.message_primary}): connect as the same "
                       "PostgreSQL role on every machine, or grant this one pg_signal_backend") from e
    return any(row[0] for row in ended)


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
