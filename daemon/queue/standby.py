"""One active watcher per queue, across machines: the others stand by and take over when it dies,
freezes or is cut off.

A queue has one inbox (shared by every machine that uses the queue, mounted wherever each one
likes), so one watcher per queue is one watcher per inbox: two would race to queue each file. The
lock is the queue's (db.try_lock). On PostgreSQL it is an advisory lock held by the active watcher's
own connection, which the server frees when that watcher dies, with a heartbeat the watcher renews
by the server's clock: a standby ends the session of a holder whose heartbeat has gone stale (a
stopped process, a frozen or unplugged machine) and takes over; the old holder, once it runs again,
finds its session gone and stands by. Its writes are fenced: `Lock.check` inside each transaction.
On SQLite, one machine, it is a file lock that only the holder's death frees (sqlite.FileLock).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from loguru import logger
from sqlalchemy import Engine

from daemon.queue.db import Lock, lock_held

WATCHER_LOCK = "the queue's watcher"  # the lock's name (db.try_lock), the same on every machine
STANDBY_SECONDS = 2.0  # how often a standby tries for the lock: the longest a dead watcher goes unreplaced
# How often the active watcher renews its heartbeat (and checks it still holds the lock); a holder
# that misses five in a row is replaced (postgres.LOCK_STALE_SECONDS).
LOCK_CHECK_SECONDS = 3.0


def run_when_active(take: Callable[[], Lock | None], run: Callable[[threading.Event, Lock], None],
                    stop: threading.Event, what: str) -> None:
    """Stand by until `take` gets the lock, then `run(halt, lock)` until stopped or the lock is lost
    (another watcher took over while this one was stopped, or the database went away), then stand
    by again."""
    standing_by = unreachable = False
    while not stop.is_set():
        try:
            lock = take()
        except Exception as e:  # the database is unreachable: nobody can be sure to be the one
            if not unreachable:
                logger.warning("cannot become the active {} ({}); trying again every {:.0f} s", what, e,
                               STANDBY_SECONDS)
                unreachable = True
            stop.wait(STANDBY_SECONDS)
            continue
        unreachable = False
        if lock is None:
            if not standing_by:
                logger.info("another {} is active; standing by to take over", what)
                standing_by = True
            stop.wait(STANDBY_SECONDS)
            continue
        standing_by = False
        logger.info("active {}", what)
        halt = threading.Event()
        monitor = threading.Thread(target=_watch_lock, args=(lock, stop, halt), daemon=True)
        monitor.start()
        try:
            run(halt, lock)
        finally:
            halt.set()
            monitor.join()
            lock.release()
        if not stop.is_set():
            logger.warning("no longer the active {} (another took over while this one was stopped or cut off, "
                           "or the queue's database went away); standing by", what)


def _watch_lock(lock: Lock, stop: threading.Event, halt: threading.Event) -> None:
    while not halt.is_set():
        if stop.wait(LOCK_CHECK_SECONDS) or not lock.alive():
            halt.set()


def watcher_active(db: str, engine: Engine) -> bool:
    """Whether a watcher of this queue is active (holds the lock), for the status page. Standby
    watchers hold nothing, so nothing shows them."""
    return lock_held(db, engine, WATCHER_LOCK)
