"""The `workers` table: what each worker process is doing, for `status` and for crash recovery."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import col, select

from daemon.db import WorkerRow, WorkerState, reading, utcnow, writing

STALE_AFTER = timedelta(minutes=10)  # no heartbeat for this long: treat as dead even if the pid lives


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class Registry:
    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utcnow,
                 alive: Callable[[int], bool] = pid_alive) -> None:
        self.engine = engine
        self.clock = clock
        self.alive = alive
        self.host = socket.gethostname()

    def prune(self) -> list[WorkerRow]:
        """Delete rows of workers on this host that died without cleaning up; return them."""
        now = self.clock()
        with writing(self.engine) as session:
            rows = session.exec(select(WorkerRow).where(WorkerRow.host == self.host)).all()
            stale = [r for r in rows if r.pid != os.getpid()
                     and (not self.alive(r.pid) or now - r.heartbeat_at > STALE_AFTER)]
            for row in stale:
                session.delete(row)
            return stale

    def busy_job_ids(self) -> set[int]:
        """Jobs held by live workers, which start-up recovery must leave alone."""
        with reading(self.engine) as session:
            ids = session.exec(select(WorkerRow.current_job_id).where(col(WorkerRow.current_job_id).is_not(None)))
            return {i for i in ids if i is not None}

    def register(self, model: str, precision: str) -> None:
        with writing(self.engine) as session:
            row = session.get(WorkerRow, os.getpid())
            if row is not None:
                session.delete(row)
                session.flush()
            now = self.clock()
            session.add(WorkerRow(pid=os.getpid(), host=self.host, model=model, precision=precision,
                                  started_at=now, heartbeat_at=now))

    def heartbeat(self, state: WorkerState, reason: str | None, rss_mb: float, job_id: int | None) -> None:
        with writing(self.engine) as session:
            row = session.get(WorkerRow, os.getpid())
            if row is None:
                return
            row.state, row.reason, row.rss_mb, row.current_job_id = state, reason, round(rss_mb, 1), job_id
            row.heartbeat_at = self.clock()
            session.add(row)

    def unregister(self) -> None:
        with writing(self.engine) as session:
            row = session.get(WorkerRow, os.getpid())
            if row is not None:
                session.delete(row)

    def workers(self) -> list[WorkerRow]:
        with reading(self.engine) as session:
            return list(session.exec(select(WorkerRow).order_by(col(WorkerRow.started_at))).all())
