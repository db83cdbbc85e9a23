"""Run one command and report its wall time, CPU time and kernel-tracked peak RSS.

Usage: python bench/_peak.py REPORT.json -- cmd [args...]

A separate wrapper process, because RUSAGE_CHILDREN only covers children that have been waited
for: in a fresh wrapper it covers exactly this one command's process tree, so one measurement
never sees another's peak (in the benchmark process it would accumulate across runs). The
figures go to a file rather than stdout so they cannot mix with the command's own output.
Kept free of third-party imports so the wrapper itself stays small and starts fast.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print("usage: _peak.py REPORT.json -- cmd [args...]", file=sys.stderr)
        return 2
    report, cmd = argv[1], argv[3:]
    started = time.perf_counter()
    returncode = subprocess.call(cmd)  # inherits our stdout/stderr, which the caller redirects
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    # ru_maxrss is KiB on Linux but bytes on macOS; it is the peak of the largest single
    # descendant (not a sum over the tree).
    scale = 1 if sys.platform == "darwin" else 1024
    with open(report, "w", encoding="utf-8") as f:
        json.dump({"returncode": returncode, "wall_seconds": wall,
                   "ru_maxrss_bytes": usage.ru_maxrss * scale,
                   "cpu_seconds": usage.ru_utime + usage.ru_stime}, f)
    return returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv))
