"""Which files the page sends: a job's own recording and the transcripts written for it, never a
path a request names. Each must be a regular file named without `..`, not a link (a recording
replaced by a link to another file is refused); a recording is reached through no link at all, as
jobs name their files by their real path (inputs.canonical) and the inbox by its own."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from daemon.config import FORMATS
from daemon.queue.db import Job
from daemon.queue.jobs import JobQueue


def recording(queue: JobQueue, job: Job) -> Path | None:
    path = plain_file(queue.location(job))
    return path if path is not None and os.path.realpath(path) == str(path) else None


def transcript_file(queue: JobQueue, job: Job, fmt: str) -> Path | None:
    """The job's file in format `fmt` (one of FORMATS, which are also the files' suffixes)."""
    if fmt not in FORMATS or job.id is None:
        return None
    return next((plain_file(p) for p in queue.outputs(job.id) if p.suffix == f".{fmt}"), None)


def plain_file(path: Path) -> Path | None:
    """`path` if it is absolute, without `..`, and a regular file (not a link to one); else None."""
    text = str(path)
    if not path.is_absolute() or os.path.normpath(text) != text:
        return None
    try:
        return path if stat.S_ISREG(os.lstat(path).st_mode) else None
    except OSError:
        return None
