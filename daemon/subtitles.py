"""SRT rendering and atomic output writes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from daemon.transcript import Segment

MIN_CUE_SECONDS = 0.001  # SRT players drop cues whose end is not after their start


def timestamp(seconds: float) -> str:
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d},{ms:03d}"


def render(segments: Iterable[Segment]) -> str:
    """Numbered cues with strictly increasing, non-overlapping times; blank text is dropped."""
    cues: list[str] = []
    last_end = 0.0
    for seg in segments:
        text = " ".join(seg.text.split())  # a blank line inside a cue would end it early
        if not text:
            continue
        start = max(seg.start, last_end)
        end = max(seg.end, start + MIN_CUE_SECONDS)
        cues.append(f"{len(cues) + 1}\n{timestamp(start)} --> {timestamp(end)}\n{text}\n")
        last_end = end
    return "\n".join(cues)


def write_atomic(path: Path, data: str) -> None:
    """Readers see the old file or the whole new one, never a partial write.

    The temp file is named after a hash of the target: short (the target's name may already use
    all 255 bytes), and the same every time, so one left behind by a killed writer is removed here.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{hashlib.sha256(os.fsencode(path.name)).hexdigest()[:16]}."
    for stale in path.parent.glob(f"{prefix}*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)  # the rename itself survives a power cut before the job is marked done


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
