"""The CPU cores shared by the jobs one process transcribes at once, on one copy of the weights.

Decoding a window is a few rows at a time: it reads weights more than it computes, and much of it
is Python. One job on two threads leaves the second core idle for much of each window: two jobs
on one thread each, in the bare engine, took 0.80-0.85x the time; in the whole worker the gain did
not stand above the spread (bench/backlog.py, docs/benchmarks.md). torch's thread count belongs to
the OS thread that sets it, so each job sets its own before each window, from how many jobs are
running then. Only the process's main thread gets more than one: a team of torch threads started
from any other thread runs slower than one thread alone (libgomp; here a bf16 decoding product took
0.18 s on two threads from the main thread, 0.25 s on one, 0.28-0.35 s on two from another thread).
So a job alone runs in the main thread on every thread, and a second one beside it on one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class Cores:
    def __init__(self, threads: int) -> None:
        self.threads = threads  # torch threads for all the jobs together
        self._running = 0
        self._lock = threading.Lock()

    @contextmanager
    def job(self) -> Iterator[None]:
        """While a job is transcribed in this thread."""
        with self._lock:
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1

    @property
    def running(self) -> int:
        return self._running

    def share(self) -> int:
        """Give this thread its share of the threads for the next window; returns how many jobs share them."""
        running = max(1, self._running)
        main = threading.current_thread() is threading.main_thread()
        torch.set_num_threads(max(1, self.threads - (running - 1)) if main else 1)
        return running
