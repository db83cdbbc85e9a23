"""Which number format `precision = "auto"` may rightly pick on this CPU, judged by a measurement of
its own: the same matrix product as daemon/engine/precision.py's probe, timed by torch.utils.benchmark, so a
probe that timed the wrong thing could not vouch for itself."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch.utils import benchmark

from daemon.engine import precision

NOISE = 2.0  # two timings of one product on a busy 2-core machine can differ this much
HALVES = ("bf16", "fp16")


def matmul_seconds() -> dict[str, float]:
    """Median seconds per PROBE_SIZE² product in each format on this CPU."""
    seconds = {}
    for name, dtype in precision.DTYPES.items():
        a = torch.randn(precision.PROBE_SIZE, precision.PROBE_SIZE).to(dtype)
        timer = benchmark.Timer("torch.mm(a, a)", globals={"torch": torch, "a": a})
        seconds[name] = timer.blocked_autorange(min_run_time=0.5).median
    return seconds


def right_choices(seconds: Mapping[str, float], noise: float = NOISE) -> set[str]:
    """The formats precision.py's rule allows for these timings when each may be off by `noise`×:
    a half format that may be the faster half and may keep up with fp32 (within KEEPS_UP), and fp32
    if the faster half may not keep up. With noise 1 that is exactly the rule's answer (both on a tie)."""
    fp32, best_half = seconds["fp32"], min(seconds[h] for h in HALVES)
    keeps_up = precision.KEEPS_UP * fp32
    choices = {h for h in HALVES if seconds[h] <= noise * best_half and seconds[h] <= noise * keeps_up}
    return choices | ({"fp32"} if noise * best_half >= keeps_up else set())
