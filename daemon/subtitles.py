"""SRT rendering and atomic output writes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from daemon.transcript import Segment


def _umask(status: str = "/proc/self/status") -> int:
    """The process's umask. os.umask can only read it by setting it, for every thread at once, so
    it is read from /proc where the kernel shows it (Linux 4.7+). Elsewhere it is set and put back
    once, at import; a file another thread creates in between gets the stricter 077."""
    try:
        with open(status) as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # transcripts get the user's umask, like any file they make
VIDEO_FPS = 25  # PAL, the slowest common frame rate
MIN_CUE_MS = 1000 // VIDEO_FPS  # one frame (40 ms): a shorter cue may never be shown


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def timestamp(seconds: float) -> str:
    ms = _ms(seconds)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d},{ms:03d}"


def render(segments: Iterable[Segment]) -> str:
    """Numbered cues with increasing, non-overlapping times, each at least one video frame long.

    Segments with blank text or no length (end not after start) are dropped. A short cue is
    lengthened to MIN_CUE_MS, and the next one starts no earlier than it ends. Times are whole
    milliseconds, as SRT writes them, so rounding cannot shorten or overlap a cue.
    """
    cues: list[str] = []
    last_end = 0
    for seg in segments:
        text = " ".join(seg.text.split())  # a blank line inside a cue would end it early
        if not text or seg.end <= seg.start:
            continue
        start = max(_ms(seg.start), last_end)
        end = max(_ms(seg.end), start + MIN_CUE_MS)
        cues.append(f"{len(cues) + 1}\n{timestamp(start / 1000)} --> {timestamp(end / 1000)}\n{text}\n")
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
        os.chmod(tmp, FILE_MODE)  # mkstemp creates 0600
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
