"""Being a good citizen: pause under memory pressure, back off when the machine is throttling.

Readings come from probes that tests replace (memory, thermal, clock), because pressure and heat
cannot be produced on demand. Checks run between windows, never inside one.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
import re
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
from loguru import logger

from daemon.queue.db import WorkerState

MB = 1 << 20
LOW_MEMORY_MB = 1024  # below this available, pause; resume above 1.5× (hysteresis)
RESUME_FACTOR = 1.5
PSI_PAUSE = 25.0  # % of time some task stalled on memory (avg10); resume below half
BACKOFF_START_SECONDS = 5.0
BACKOFF_MAX_SECONDS = 120.0
SLOWDOWN_FACTOR = 1.5  # a window this much slower than this worker's usual pace means throttling
SLOW_WINDOWS = 3  # ... for this many windows in a row (one slow window is noise)
PACE_WINDOWS = 15  # the usual pace is the median of this many recent model windows (~7 min of audio)
FIT_OVERHEAD_MB = 400  # activations, decoder caches and the interpreter beside the weights
CHUNK_MB = 64  # one more chunk in a batch: its mel, encoder output and decoder caches (base: ~30 MB)


@dataclass(frozen=True)
class Memory:
    available_mb: float
    psi_some_avg10: float | None = None  # Linux pressure stall information
    macos_level: int | None = None  # kern.memorystatus_vm_pressure_level: 1 normal, 2 warn, 4 critical


def rss_mb() -> float:
    """This process's resident set size now, not its peak (/proc on Linux, the task's info on macOS)."""
    return psutil.Process().memory_info().rss / MB


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # macOS, musl: their allocators hand freed pages back by themselves
        return None


_LIBC = _glibc()


def release_memory() -> None:
    """Hand freed heap pages back to the OS. glibc keeps them otherwise, and after thousands of
    differently sized decoder tensors the worker's RSS creeps up with the recording's length."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def read_memory() -> Memory:
    if sys.platform == "darwin":
        return _read_memory_macos()
    return _read_memory_linux()


def _read_memory_linux() -> Memory:
    available = 0.0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) / 1024
    psi = None
    try:
        with open("/proc/pressure/memory") as f:
            match = re.search(r"some avg10=([\d.]+)", f.read())
            psi = float(match.group(1)) if match else None
    except OSError:
        pass  # kernels without PSI
    return Memory(available, psi_some_avg10=psi)


@functools.cache
def _libsystem() -> ctypes.CDLL:
    libc = ctypes.CDLL("/usr/lib/libSystem.B.dylib", use_errno=True)
    libc.sysctlbyname.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                  ctypes.c_void_p, ctypes.c_size_t]
    libc.sysctlbyname.restype = ctypes.c_int
    return libc


def _sysctl(name: str) -> bytes:
    """A macOS kernel value's bytes, read in-process: forking sysctl(8) from a ~600 MB worker at
    every check costs more than the check."""
    size = ctypes.c_size_t(8)  # the values read here are ints and uint64s
    value = ctypes.create_string_buffer(size.value)
    if _libsystem().sysctlbyname(name.encode(), value, ctypes.byref(size), None, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"cannot read {name}: {os.strerror(error)}")
    return value.raw[: size.value]


def _read_memory_macos(sysctl: Callable[[str], bytes] = _sysctl) -> Memory:
    # psutil-style "available" understates free memory on macOS (compressed and file-backed
    # pages); the kernel's own pressure level is what memory_pressure(1) reports.
    def number(name: str) -> int:
        return int.from_bytes(sysctl(name), sys.byteorder)

    level = number("kern.memorystatus_vm_pressure_level")
    free_pct = number("kern.memorystatus_level")  # % of memory the kernel considers available
    total = number("hw.memsize") / MB
    return Memory(total * free_pct / 100, macos_level=level)


def read_thermal() -> str | None:
    """A reason string when the OS says the machine is hot or clocked down, else None."""
    if sys.platform == "darwin":
        try:
            from Foundation import NSProcessInfo  # type: ignore[import-not-found]  # optional pyobjc
        except ImportError:
            return None
        state = NSProcessInfo.processInfo().thermalState()
        return f"macOS thermal state {state} (serious or worse)" if state >= 2 else None
    return _linux_thermal()


def _linux_thermal() -> str | None:
    for zone in glob.glob("/sys/class/thermal/thermal_zone*"):
        try:
            temp = int(Path(zone, "temp").read_text())
            trips = [int(Path(p).read_text()) for p in glob.glob(f"{zone}/trip_point_*_temp")]
        except (OSError, ValueError):
            continue
        passive = [t for t in trips if t > 0]
        if passive and temp >= min(passive):
            return f"{Path(zone).name} at {temp / 1000:.0f} °C, past its trip point"
    for cpu in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq"):
        try:
            cur = int(Path(cpu, "scaling_cur_freq").read_text())
            top = int(Path(cpu, "cpuinfo_max_freq").read_text())
            limit = int(Path(cpu, "scaling_max_freq").read_text())
        except (OSError, ValueError):
            continue
        if limit < top * 0.8:
            return f"CPU clock capped at {limit / top:.0%} of its maximum ({cur // 1000} MHz now)"
    return None


def model_fits(checkpoint_bytes: int, memory: Memory, reserve_mb: float = LOW_MEMORY_MB) -> bool:
    """Whether loading a checkpoint leaves `reserve_mb` free: stored fp16, held in fp32 (twice
    its bytes), plus working room for activations and caches."""
    needed_mb = 2 * checkpoint_bytes / MB + FIT_OVERHEAD_MB
    return needed_mb + reserve_mb <= memory.available_mb


@dataclass
class Status:
    state: WorkerState
    reason: str | None = None


class Guard:
    """Decides, between windows, whether to go on, pause for memory, or back off for heat.

    `wait(seconds)` returns True when the worker was asked to stop meanwhile; in production
    it is the stop event's wait, in tests a fake that advances a fake clock.

    Throttling shows as windows that run slower than usual. The pace of a window is its wall
    time per second of audio the model ran on; windows the model skipped have none. The usual
    pace is the median of the last PACE_WINDOWS paces, so a few odd windows, fast or slow, do not
    move it; one usual pace for each number of jobs the worker runs at once, since they share the
    cores. SLOW_WINDOWS slow windows in a row mean throttling: back off. A pace that persists
    becomes the usual one once it fills half the history (after two backoffs at most): it is
    this worker's pace now, whether a throttle that waiting does not cure or a baseline learnt
    from a few abnormally fast windows, and backing off forever would not help. Real heat is
    still reported by the thermal probe, which backs off for as long as it lasts.
    """

    def __init__(
        self,
        report: Callable[[Status], None],
        wait: Callable[[float], bool],
        memory: Callable[[], Memory] = read_memory,
        thermal: Callable[[], str | None] = read_thermal,
        clock: Callable[[], float] = time.monotonic,
        low_memory_mb: float = LOW_MEMORY_MB,
    ) -> None:
        self.report = report
        self.wait = wait
        self.memory = memory
        self.thermal = thermal
        self.clock = clock
        self.low_memory_mb = low_memory_mb
        self.paces: dict[int, deque[float]] = {}  # by the number of jobs that ran at once
        self.slow_windows = 0
        self.backoff = BACKOFF_START_SECONDS

    def pressure(self, m: Memory, resuming: bool) -> str | None:
        """Why memory is too tight now; `resuming` applies the stricter resume thresholds."""
        factor = RESUME_FACTOR if resuming else 1.0
        if m.macos_level is not None and m.macos_level >= (2 if resuming else 4):
            return f"macOS memory pressure level {m.macos_level}"
        if m.available_mb < self.low_memory_mb * factor:
            return f"only {m.available_mb:.0f} MB of memory available"
        if m.psi_some_avg10 is not None and m.psi_some_avg10 > PSI_PAUSE / factor:
            return f"memory pressure stall {m.psi_some_avg10:.0f}%"
        return None

    def batch_size(self, requested: int) -> int:
        """As many chunks per batch as asked for, but only as many as free memory allows."""
        room = (self.memory().available_mb - self.low_memory_mb) // CHUNK_MB
        return int(max(1, min(requested, room)))

    def check(self, model_pace: float | None = None, together: int = 1) -> bool:
        """Block while memory is tight or the machine throttles; False if asked to stop meanwhile.

        `model_pace`: wall seconds the last window took per second of audio the model ran on;
        None when the model did not run (a skipped silent window's milliseconds say nothing
        about the CPU). `together`: how many jobs shared the cores meanwhile.
        """
        if not self._memory_ok():
            return False
        return self._throttle_ok(model_pace, together)

    def _memory_ok(self) -> bool:
        reason = self.pressure(self.memory(), resuming=False)
        if reason is None:
            return True
        logger.warning("pausing: {}", reason)
        paused_at = self.clock()
        delay = BACKOFF_START_SECONDS
        while reason is not None:
            self.report(Status(WorkerState.PAUSED, reason))
            if self.wait(delay):
                return False
            delay = min(delay * 2, BACKOFF_MAX_SECONDS)
            reason = self.pressure(self.memory(), resuming=True)
        logger.info("resuming after {:.0f} s paused for memory", self.clock() - paused_at)
        self.report(Status(WorkerState.BUSY))
        return True

    def _throttle_ok(self, model_pace: float | None, together: int) -> bool:
        reason = self.thermal()
        if model_pace is not None and model_pace > 0:
            paces = self.paces.setdefault(together, deque(maxlen=PACE_WINDOWS))
            usual = statistics.median(paces) if paces else model_pace
            slow = model_pace > usual * SLOWDOWN_FACTOR
            self.slow_windows = self.slow_windows + 1 if slow else 0
            paces.append(model_pace)
            if reason is None and self.slow_windows >= SLOW_WINDOWS:
                reason = (f"windows {model_pace / usual:.1f}× slower than this worker's usual pace "
                          f"for {self.slow_windows} windows: the CPU is being throttled or shared")
        if reason is None:
            if not self.slow_windows:  # hysteresis: ease back down, but not while the slowdown goes on
                self.backoff = max(BACKOFF_START_SECONDS, self.backoff / 2)
            return True
        logger.warning("backing off {:.0f} s: {}", self.backoff, reason)
        self.report(Status(WorkerState.BACKOFF, reason))
        stopped = self.wait(self.backoff)
        self.backoff = min(self.backoff * 2, BACKOFF_MAX_SECONDS)
        self.slow_windows = 0
        self.report(Status(WorkerState.BUSY))
        return not stopped
