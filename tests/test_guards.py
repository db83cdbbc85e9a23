"""Memory guard and throttle backoff.

Memory pressure and heat cannot be produced on demand here, so these tests inject the probes
(memory, thermal) and a fake clock whose `wait` advances time instead of sleeping.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from daemon.processes.guards import (
    BACKOFF_MAX_SECONDS,
    MB,
    Guard,
    Memory,
    Status,
    _read_memory_macos,
    model_fits,
    read_memory,
    rss_mb,
)
from daemon.queue.db import WorkerState
from tests.guard_fakes import FakeTime, memory_sequence

PLENTY = Memory(available_mb=8000, psi_some_avg10=0.0)


def make_guard(t: FakeTime, memory: Iterator[Memory] | None = None, thermal: list[str | None] | None = None,
               reports: list[Status] | None = None) -> Guard:
    readings = memory or memory_sequence(PLENTY)
    heat = iter(thermal or [])
    return Guard(
        report=(reports if reports is not None else []).append,
        wait=t.wait,
        memory=lambda: next(readings),
        thermal=lambda: next(heat, None),
        clock=t.clock,
        low_memory_mb=1000,
    )


def test_memory_pressure_pauses_then_resumes_with_hysteresis() -> None:
    t = FakeTime()
    reports: list[Status] = []
    # Below 1000 MB pauses; 1200 MB is above the pause line but below the 1500 MB resume line.
    guard = make_guard(t, memory_sequence(Memory(600), Memory(1200), Memory(1400), Memory(1600)), reports=reports)
    assert guard.check() is True
    assert t.waits == [5.0, 10.0, 20.0]  # exponential while paused
    assert [r.state for r in reports] == [WorkerState.PAUSED] * 3 + [WorkerState.BUSY]
    assert "600 MB" in reports[0].reason


def test_pressure_stall_and_macos_levels_count_as_pressure() -> None:
    guard = make_guard(FakeTime())
    assert "stall" in guard.pressure(Memory(8000, psi_some_avg10=40.0), resuming=False)
    assert guard.pressure(Memory(8000, psi_some_avg10=20.0), resuming=False) is None
    assert guard.pressure(Memory(8000, psi_some_avg10=20.0), resuming=True) is not None  # hysteresis
    assert "level 4" in guard.pressure(Memory(8000, macos_level=4), resuming=False)
    assert guard.pressure(Memory(8000, macos_level=2), resuming=False) is None
    assert guard.pressure(Memory(8000, macos_level=2), resuming=True) is not None
    assert guard.pressure(Memory(8000, macos_level=1), resuming=True) is None


def test_stop_while_paused_returns_false() -> None:
    t = FakeTime()
    t.stop_after = 2
    guard = make_guard(t, memory_sequence(Memory(100)))
    assert guard.check() is False
    assert len(t.waits) == 2


def test_thermal_backoff_is_exponential_capped_and_eases_off() -> None:
    t = FakeTime()
    reports: list[Status] = []
    guard = make_guard(t, thermal=["hot"] * 8 + [None] * 3, reports=reports)
    for _ in range(8):
        assert guard.check(0.1) is True
    assert t.waits == [5.0, 10.0, 20.0, 40.0, 80.0, 120.0, 120.0, 120.0]
    assert max(t.waits) == BACKOFF_MAX_SECONDS
    assert reports[0] == Status(WorkerState.BACKOFF, "hot")
    for _ in range(3):  # cool again: no waiting, and the next backoff starts lower
        assert guard.check(0.1) is True
    assert len(t.waits) == 8
    assert guard.backoff == 15.0


def test_sustained_slowdown_against_our_own_baseline_is_throttling() -> None:
    t = FakeTime()
    reports: list[Status] = []
    guard = make_guard(t, reports=reports)
    for rtf in [0.10, 0.11, 0.09, 0.10, 0.30, 0.10]:  # one slow window is noise
        guard.check(rtf)
    assert t.waits == []
    for rtf in [0.30, 0.31, 0.32]:
        guard.check(rtf)
    assert t.waits == [5.0]
    assert reports[-2].state == WorkerState.BACKOFF and "slower" in reports[-2].reason


def test_skipped_windows_leave_the_usual_pace_alone() -> None:
    t = FakeTime()
    guard = make_guard(t)
    for _ in range(5):
        guard.check(0.10)
    for _ in range(40):  # 20 minutes of silence the model never ran on
        guard.check(None)
    for _ in range(10):  # the usual pace is still the usual pace...
        guard.check(0.10)
    assert t.waits == []
    for _ in range(3):  # ...and 1.6 times it is still slow
        guard.check(0.16)
    assert t.waits == [5.0]


def test_a_few_abnormally_fast_windows_cannot_make_the_guard_back_off_for_good() -> None:
    t = FakeTime()
    guard = make_guard(t)
    for _ in range(15):
        guard.check(0.10)
    for _ in range(5):  # a minority of odd windows does not move the usual pace at all
        guard.check(0.001)
    for _ in range(10):
        guard.check(0.10)
    assert t.waits == []

    fresh_t = FakeTime()
    fresh = make_guard(fresh_t)
    for _ in range(5):  # a fresh worker whose first windows were abnormally fast
        fresh.check(0.001)
    waits_after = []
    for _ in range(60):
        fresh.check(0.10)
        waits_after.append(len(fresh_t.waits))
    assert 1 <= waits_after[-1] <= 2  # a bounded number of backoffs...
    assert waits_after[10] == waits_after[-1]  # ...all in the first few windows, then none


def test_a_throttle_backs_off_and_the_pace_recovers_when_it_ends() -> None:
    t = FakeTime()
    reports: list[Status] = []
    guard = make_guard(t, reports=reports)
    for _ in range(15):
        guard.check(0.10)
    for _ in range(6):  # throttled to a third of the speed
        guard.check(0.30)
    assert t.waits == [5.0, 10.0]  # exponential
    assert reports[-2].state == WorkerState.BACKOFF and "3.0× slower" in reports[-2].reason
    for _ in range(30):  # it lasts: after a bounded number of backoffs it is this worker's pace now
        guard.check(0.30)
    assert t.waits == [5.0, 10.0]
    for _ in range(20):  # fast again: no backoff, and the usual pace comes back down
        guard.check(0.10)
    assert t.waits == [5.0, 10.0]
    for _ in range(3):  # so the next throttle is caught again, from the first backoff (eased back down)
        guard.check(0.30)
    assert t.waits == [5.0, 10.0, 5.0]


def test_model_fit_estimate() -> None:
    tiny_bytes = 75 * 2**20
    assert model_fits(tiny_bytes, Memory(available_mb=4000), reserve_mb=1024)
    assert not model_fits(tiny_bytes, Memory(available_mb=1200), reserve_mb=1024)


def test_real_probes_read_this_machine() -> None:
    memory = read_memory()
    assert memory.available_mb > 100
    assert 10 < rss_mb() < 10_000


def _spawning_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def spawned(*args: object, **kwargs: object) -> None:
        raise AssertionError("a memory check started a process")

    monkeypatch.setattr(subprocess, "Popen", spawned)
    for name in ("fork", "posix_spawn", "posix_spawnp", "system"):
        monkeypatch.setattr(os, name, spawned)


def test_macos_memory_comes_from_the_kernel_values_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS cannot be run here: its kernel values come from an injected reader, in the sizes
    sysctlbyname gives them (int: 4 bytes, hw.memsize: 8). Nothing may start a process."""
    values = {"kern.memorystatus_vm_pressure_level": (2, 4), "kern.memorystatus_level": (37, 4),
              "hw.memsize": (16 << 30, 8)}

    def sysctl(name: str) -> bytes:
        value, size = values[name]
        return value.to_bytes(size, sys.byteorder)

    _spawning_fails(monkeypatch)
    memory = _read_memory_macos(sysctl)
    assert memory.macos_level == 2
    assert memory.available_mb == pytest.approx(16384 * 0.37)
    assert read_memory().available_mb > 0 and rss_mb() > 0  # this machine's own probes start nothing either


def test_rss_is_the_current_size_not_the_peak() -> None:
    before = rss_mb()
    block = np.ones(256 * MB // 8)  # written, so resident
    grown = rss_mb()
    del block
    after = rss_mb()
    assert grown - before > 200 and grown - after > 200
    statm = Path("/proc/self/statm")
    if statm.exists():  # Linux: the kernel's own figure
        assert rss_mb() == pytest.approx(int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB, abs=5)
