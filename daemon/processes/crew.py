"""A worker process: the workers that transcribe jobs at once on one copy of the model.

One job does not keep two cores busy (engine/cores.py), so with `concurrency` above 1 a process
runs that many workers, each in a thread of its own: the first, in the main thread (where signals
arrive, and where torch runs a lone job fastest on every core), loads the model; the others share
it and take a job only while the first has one. Each is a worker of its own to the queue (its own
name, slot, leases and checkpoints), so a crash, a stop or a restart treats their jobs as it treats
any worker's. The default is one: on 2 cores, two at once drained a backlog no faster, the GIL
taking back what the second core gave (docs/benchmarks.md, issue 25 lever 2).
"""

from __future__ import annotations

import threading

from loguru import logger

from daemon.config import Config
from daemon.processes.worker import Worker


class Crew:
    def __init__(self, cfg: Config, stop: threading.Event) -> None:
        self.cfg = cfg
        self.stop = stop
        self.workers = [Worker(cfg, stop)]
        self._failures: list[BaseException] = []

    @property
    def recycle(self) -> bool:
        return any(w.recycle for w in self.workers)

    def initialize(self) -> None:
        resident = self.workers[0].initialize()
        if resident is None:
            return  # asked to stop while waiting for memory: run() returns at once
        for _ in range(1, self.cfg.concurrency):
            worker = Worker(self.cfg, self.stop, second=True)
            self.workers.append(worker)
            worker.initialize(resident)
        if len(self.workers) > 1:
            logger.info("{} jobs at once on one copy of the model: workers {}", len(self.workers),
                        ", ".join(w.name for w in self.workers))

    def run(self, exit_when_empty: bool = False) -> None:
        """Run every worker until stopped (or, with `exit_when_empty`, until none finds a job); an
        error that stops one stops them all, and is raised here."""
        drained = threading.Event()  # the first worker found nothing left: the others end with their jobs
        threads = [threading.Thread(target=self._run, args=(w, exit_when_empty, drained), name=f"worker {w.name}")
                   for w in self.workers[1:]]
        for thread in threads:
            thread.start()
        try:
            self.workers[0].run(exit_when_empty)
        except BaseException:
            self.stop.set()
            raise
        finally:
            drained.set()
            for thread in threads:
                thread.join()
        if self._failures:
            raise self._failures[0]

    def _run(self, worker: Worker, exit_when_empty: bool, drained: threading.Event) -> None:
        try:
            worker.run(exit_when_empty, drained)
        except BaseException as e:
            self._failures.append(e)
            self.stop.set()

    def shutdown(self) -> None:
        for worker in reversed(self.workers):
            worker.shutdown()
