"""Loguru set-up, called once by each entry point: one rotating file per process."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from loguru import logger

ROTATION = "10 MB"
RETENTION = 5  # rotated files kept per process
STDERR_FORMAT = "<green>{time:HH:mm:ss}</green> {extra[proc]} <level>{message}</level>"
FILE_FORMAT = "{time:YYYY-MM-DDTHH:mm:ss.SSSZZ} {level} pid={process.id} {message}"


def printable(text: str) -> str:
    """`text` safe for one line of a terminal table or a log: control characters (a newline, an
    escape sequence in a file name) are shown as escapes instead of acting."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _one_line(record: Any) -> None:
    # A file name with a newline must not forge a log line of its own (a tab or an escape sequence
    # must not act either): every message is one printable line. Tracebacks are added after this.
    record["message"] = printable(record["message"])


def log_file(log_dir: Path, process: str) -> Path:
    return log_dir / f"{process}.log"


def setup(log_dir: Path, process: str, *, foreground: bool) -> None:
    """Log to `<log_dir>/<process>.log` (owner-only), and to stderr: everything in a terminal,
    only warnings and errors under a service manager (which files stderr separately)."""
    logger.remove()
    logger.configure(extra={"proc": process}, patcher=_one_line)
    logger.add(sys.stderr, level="INFO" if foreground else "WARNING", format=STDERR_FORMAT)
    log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    logger.add(log_file(log_dir, process), level="DEBUG", rotation=ROTATION, retention=RETENTION,
               opener=_private, format=FILE_FORMAT)


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)
