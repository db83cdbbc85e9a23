"""Injected time and memory readings for guard tests: pressure and heat can't be made for real."""

from __future__ import annotations

from collections.abc import Iterator

from daemon.processes.guards import Memory


class FakeTime:
    """Injected clock: `wait` advances it and records each wait instead of sleeping."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []
        self.stop_after: int | None = None  # simulate a SIGTERM during the n-th wait

    def clock(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += seconds
        return self.stop_after is not None and len(self.waits) >= self.stop_after


def memory_sequence(*readings: Memory) -> Iterator[Memory]:
    yield from readings
    while True:
        yield readings[-1]
