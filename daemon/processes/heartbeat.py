"""The worker's heartbeat thread: it renews the lease of the job in hand, and the worker's row in
`workers`, every few seconds, whatever the job is doing. Hashing a large video on a slow share, or
one slow window, can take longer than a lease; a live worker must never lose its job to another
(which would count a crash) nor show as `gone` in `status`. So the lease can be short, and a job
whose worker really died is resumed elsewhere soon."""

from __future__ import annotations

import threading

from loguru import logger

from daemon.processes.guards import rss_mb
from daemon.queue.db import storage_error
from daemon.queue.jobs import JobQueue
from daemon.queue.registry import Registry

STOP_WAIT_SECONDS = 5.0  # launchd gives a stopping service 20 s in all


class Heartbeat:
    def __init__(self, queue: JobQueue, registry: Registry, holder: str, interval: float) -> None:
        self.queue = queue
        self.registry = registry
        self.holder = holder
        self.interval = interval
        self.job: int | None = None  # the job in hand: set by the worker when it claims one, None after
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._complained = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():  # a beat waiting on a busy database is not worth a slow shutdown
            self._thread.join(timeout=STOP_WAIT_SECONDS)

    def beat(self) -> None:
        """One beat: renew the lease of the job in hand, then the worker's heartbeat."""
        job = self.job
        try:
            if job is not None:  # a lease lost meanwhile is the worker's to find, at its next write (LeaseLost)
                self.queue.renew(job, self.holder)
            self.registry.beat(rss_mb())
            self._complained = False
        except Exception as e:
            if not storage_error(e):
                logger.exception("heartbeat failed")
            elif not self._complained:  # said once per outage; the next beat tries again
                logger.warning("could not renew the lease or the heartbeat: {}", getattr(e, "orig", e))
            self._complained = True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()
