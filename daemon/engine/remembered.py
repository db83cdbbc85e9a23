"""Answers of the worker's start-up checks, kept between starts so that a start pays for them once.

The speaker check (a child process loading torch and CAM++: ~3 s) and the precision probe (~0.2 s)
give the same answer every time on one machine with one set of libraries. Their answers are kept
in a small JSON file in the cache folder, each under a key made of everything that could change it:
the CPU's model and instruction-set flags, the architecture, Python's version, and what the caller
adds (torch's version, the thread count, the source of the code that answers). A new CPU, an
upgrade or a changed check makes a new key and is asked again, so a kept answer is never stale;
deleting the file makes the next start check everything again.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

FILE_NAME = "checks.json"


@cache
def cpu() -> str:
    """The CPU's model and flags as the OS describes them (/proc/cpuinfo on Linux, sysctl on macOS)."""
    try:
        fields: dict[str, str] = {}
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            name, _, value = line.partition(":")
            fields.setdefault(name.strip(), value.strip())  # the first core's: they are alike
        return f"{fields.get('model name', '')}|{fields.get('flags') or fields.get('Features', '')}"
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=5).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    return platform.processor()


def source(*paths: str | Path) -> str:
    """A digest of files' contents: a key part that changes whenever the code that answers does."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


class Remembered:
    """The kept answers in `folder` (None: nothing is kept, every start checks)."""

    def __init__(self, folder: Path | None) -> None:
        self.path = folder / FILE_NAME if folder is not None else None

    def key(self, *parts: object) -> str:
        return hashlib.sha256(json.dumps([cpu(), platform.machine(), sys.version, *parts], default=str)
                              .encode()).hexdigest()

    def get(self, key: str) -> str | None:
        return self._read().get(key)

    def put(self, key: str, answer: str) -> None:
        """Keep `answer` under `key`; a cache folder that cannot be written only costs the next start time."""
        if self.path is None:
            return
        answers = {**self._read(), key: answer}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".checks-", suffix=".tmp")
        except OSError:
            return
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(answers, f, indent=1)
            os.replace(tmp, self.path)  # a reader never sees half a file
        except OSError:
            Path(tmp).unlink(missing_ok=True)

    def _read(self) -> dict[str, str]:
        if self.path is None:
            return {}
        try:
            answers = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return answers if isinstance(answers, dict) else {}
