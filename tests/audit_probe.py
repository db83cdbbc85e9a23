"""Run `python -m daemon ARGS…` under a Python audit hook (PEP 578) that records what the process
does to the world outside itself: files opened for writing, renames, new folders, sockets and
subprocesses, one JSON line per event. It only observes. tests/test_confinement.py reads the lines.

    python tests/audit_probe.py EVENTS.jsonl ARGS…

C libraries (SQLite, FFmpeg) open files without Python seeing it; those are checked from outside.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from typing import Any

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
EVENTS = ("socket.", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.rename",
          "os.mkdir", "os.link", "os.symlink", "os.chmod")


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return os.fsdecode(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (str, int, float, type(None))) else repr(value)


def main() -> None:
    log = open(sys.argv[1], "a", buffering=1, encoding="utf-8", errors="backslashreplace")

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
            if not writes or isinstance(path, int):
                return
        elif not event.startswith(EVENTS):
            return
        log.write(json.dumps([event, _plain(args)]) + "\n")

    sys.addaudithook(hook)
    sys.argv = ["daemon", *sys.argv[2:]]
    runpy.run_module("daemon", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
