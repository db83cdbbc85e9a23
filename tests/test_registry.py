"""Worker names and the workers table: slots that survive a crash, heartbeats, `gone` workers."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from daemon.queue.db import WorkerState, connect, utcnow
from daemon.queue.registry import FORGET_AFTER, STALE_AFTER, Registry, gone, take_slot, workers
from tests.daemon_proc import REPO


def test_each_live_worker_has_its_own_slot_and_a_restart_takes_the_dead_ones(tmp_path: Path) -> None:
    first, second = take_slot(tmp_path), take_slot(tmp_path)
    assert first.name != second.name
    first.release()  # the first worker died: the kernel drops its lock
    again = take_slot(tmp_path)
    assert again.name == first.name  # its successor can take its jobs back at once
    # Another process sees the same slots (flock is per open file, across processes).
    code = (f"from daemon.queue.registry import take_slot; from pathlib import Path; "
            f"print(take_slot(Path({str(tmp_path)!r})).name)")
    other = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert other.stdout.strip() not in {again.name, second.name} and other.returncode == 0, other.stderr
    again.release()
    second.release()


def test_register_replaces_its_predecessor_and_forgets_long_gone_workers(tmp_path: Path) -> None:
    """The clock is injected: a worker being gone for a day cannot be waited for."""
    engine = connect(tmp_path / "jobs.db")
    now = [utcnow()]
    Registry(engine, "0-old", clock=lambda: now[0]).register("tiny.en", "bf16")
    Registry(engine, "1-other", clock=lambda: now[0]).register("base", "bf16")
    now[0] += FORGET_AFTER / 2
    Registry(engine, "1-other", clock=lambda: now[0]).heartbeat(WorkerState.BUSY, None, 500.0, None)
    assert [w.id for w in workers(engine)] == ["0-old", "1-other"]
    now[0] += FORGET_AFTER / 2 + timedelta(minutes=1)
    forgotten = Registry(engine, "0-old", clock=lambda: now[0]).register("tiny.en", "bf16")  # restarted in its slot
    assert forgotten == [] and sorted(w.id for w in workers(engine)) == ["0-old", "1-other"]
    now[0] += FORGET_AFTER
    (forgotten_row,) = Registry(engine, "2-new", clock=lambda: now[0]).register("tiny.en", "bf16")
    assert forgotten_row.id == "1-other"


def test_a_worker_without_a_heartbeat_is_gone_whatever_its_pid(tmp_path: Path) -> None:
    engine = connect(tmp_path / "jobs.db")
    registry = Registry(engine, "0-w")
    registry.register("tiny.en", "bf16")
    registry.heartbeat(WorkerState.BUSY, None, 500.0, None)
    (row,) = workers(engine)
    assert not gone(row, utcnow())
    assert gone(row, utcnow() + STALE_AFTER + timedelta(seconds=1))  # even though this pid is alive
