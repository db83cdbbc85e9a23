"""Memory guard and throttle backoff.

Memory pressure and heat cannot be produced on demand here, so these tests inject the probes
(memory, thermal) and a fake clock whose `wait` advances time instead of sleeping.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from daemon.db import WorkerState
from daemon.guards import BACKOFF_MAX_SECONDS, Guard, Memory, Status, model_fits, read_memory, rss_mb
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


def test_model_fit_estimate() -> None:
    tiny_bytes = 75 * 2**20
    assert model_fits(tiny_bytes, Memory(available_mb=4000), reserve_mb=1024)
    assert not model_fits(tiny_bytes, Memory(available_mb=1200), reserve_mb=1024)


def test_real_probes_read_this_machine() -> None:
    memory = read_memory()
    assert memory.available_mb > 100
    assert 10 < rss_mb() < 10_000


@pytest.mark.parametrize("state", list(WorkerState))
def test_worker_states_are_the_documented_ones(state: WorkerState) -> None:
    assert state.value in {"idle", "busy", "paused", "backoff"}
