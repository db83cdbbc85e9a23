"""Who the workers are: a stable name per worker slot on this machine, and the `workers` table
with each worker's state and heartbeat, for `status`.

A worker's name is what it writes as the holder of the jobs it runs. It belongs to a slot, a
small file this machine's workers lock while they run: a worker restarted after a crash takes
the slot (and the name) its dead predecessor held, so it can take that one's jobs back at once,
without waiting for their leases to run out and without trusting pids or host names (pids are
reused after a reboot; a Mac's host name changes with the network).
"""

from __future__ import annotations

import fcntl
import itertools
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, delete, update
from sqlmodel import col, select

from daemon.queue.db import WorkerRow, WorkerState, reading, utcnow, writing

# A live worker beats every few seconds from a thread of its own (processes/heartbeat.py), whatever
# it is doing; this is room for a database busy for a while (SQLite's busy_timeout is 30 s). Past
# this, `status` shows it as gone.
STALE_AFTER = timedelta(minutes=2)
FORGET_AFTER = timedelta(days=1)  # rows of workers gone this long are removed at start-up


@dataclass(frozen=True)
class Slot:
    name: str
    fd: int  # holds the lock for as long as this process runs (or until release())

    def release(self) -> None:
        os.close(self.fd)


def take_slot(folder: Path) -> Slot:
    """Lock the first free slot file in `folder` and return its worker name (made on first use)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for n in itertools.count():
        fd = os.open(folder / f"worker-{n}", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a live worker holds it
            os.close(fd)
            continue
        name = os.read(fd, 64).decode(errors="replace").strip()
        if not name:
            name = f"{n}-{uuid.uuid4().hex[:12]}"
            os.write(fd, name.encode())
            os.fsync(fd)
        return Slot(name, fd)
    raise AssertionError("itertools.count() is endless")


def gone(row: WorkerRow, now: datetime) -> bool:
    return now - row.heartbeat_at > STALE_AFTER


class Registry:
    def __init__(self, engine: Engine, name: str, clock: Callable[[], datetime] = utcnow) -> None:
        self.engine = engine
        self.name = name
        self.clock = clock

    def register(self, model: str, precision: str) -> list[WorkerRow]:
        """Add this worker's row (replacing its predecessor's in the same slot); forget workers gone
        for FORGET_AFTER. Returns the forgotten rows."""
        now = self.clock()
        with writing(self.engine) as session:
            forgotten = list(session.exec(select(WorkerRow).where(col(WorkerRow.heartbeat_at) < now - FORGET_AFTER,
                                                                  col(WorkerRow.id) != self.name)))
            session.execute(delete(WorkerRow).where(
                (col(WorkerRow.id) == self.name) | (col(WorkerRow.heartbeat_at) < now - FORGET_AFTER)))
            session.add(WorkerRow(id=self.name, pid=os.getpid(), host=socket.gethostname(), model=model,
                                  precision=precision, started_at=now, heartbeat_at=now))
            return forgotten

    def heartbeat(self, state: WorkerState, reason: str | None, rss_mb: float, job_id: int | None) -> None:
        with writing(self.engine) as session:
            row = session.get(WorkerRow, self.name)
            if row is None:
                return
            row.state, row.reason, row.rss_mb, row.current_job_id = state, reason, round(rss_mb, 1), job_id
            row.heartbeat_at = self.clock()
            session.add(row)

    def beat(self, rss_mb: float) -> None:
        """Only the heartbeat (and the RSS): the heartbeat thread's, between the worker's reports."""
        with writing(self.engine) as session:
            session.execute(update(WorkerRow).where(col(WorkerRow.id) == self.name)
                            .values(heartbeat_at=self.clock(), rss_mb=round(rss_mb, 1)))

    def unregister(self) -> None:
        with writing(self.engine) as session:
            row = session.get(WorkerRow, self.name)
            if row is not None:
                session.delete(row)


def workers(engine: Engine) -> list[WorkerRow]:
    with reading(engine) as session:
        return list(session.exec(select(WorkerRow).order_by(col(WorkerRow.started_at))).all())
