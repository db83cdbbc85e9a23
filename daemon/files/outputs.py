"""Where a transcript goes, what it is called, and how it is written (no torch, no database here).

Decided when the transcript is written, from the outbox of the worker writing it: the inbox's
sub-folders are mirrored (`inbox/team/a.m4a` → `outbox/team/a.srt`, `a.vtt`, …: one stem for every
format). Names are compared the way macOS's default file systems compare them, ignoring case and
Unicode normalisation, so that `Meeting.m4a` and `meeting.mp3` never write the same file anywhere.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path

from daemon.files.inputs import canonical

NAME_MAX = 255  # bytes in one file name on APFS, ext4 and most other file systems


def output_key(path: Path) -> str:
    """`path` as a case-insensitive, normalisation-insensitive file system sees it."""
    return unicodedata.normalize("NFC", str(path)).casefold()


def folder_for(source: Path, inbox: Path, outbox: Path) -> Path:
    """The outbox folder mirroring the source's folder in the inbox; the outbox itself for a file
    queued from elsewhere (`enqueue`). `source` is canonical (inputs.canonical)."""
    try:
        return outbox / source.parent.relative_to(canonical(inbox, follow_link=True))
    except ValueError:
        return outbox


def paths(folder: Path, stem: str, formats: Iterable[str]) -> dict[str, Path]:
    """Each format's file for `stem` in `folder`: format → `folder/stem.format`."""
    return {fmt: folder / f"{stem}.{fmt}" for fmt in formats}


def fits(stem: str, formats: Iterable[str]) -> bool:
    """Whether every format's name for `stem` fits in NAME_MAX bytes."""
    return all(len(f"{stem}.{fmt}".encode()) <= NAME_MAX for fmt in formats)


def names(folder: Path, stem: str, formats: Iterable[str]) -> Iterator[dict[str, Path]]:
    """The candidates for a job's files, one stem for all its formats: `stem.srt`, `stem.vtt`…,
    then `stem (2).srt`, `stem (2).vtt`…, in `folder`. A long stem is cut so that its name with the
    longest suffix fits in NAME_MAX bytes. Built from the input's own name, so it cannot point
    outside `folder`."""
    formats = tuple(formats)
    room = NAME_MAX - max(len(f".{fmt}".encode()) for fmt in formats)
    for n in itertools.count(1):
        tail = "" if n == 1 else f" ({n})"
        cut = stem.encode()[: room - len(tail.encode())].decode("utf-8", "ignore")
        yield paths(folder, cut + tail, formats)


def existing(path: Path) -> Path | None:
    """The file a case- and normalisation-insensitive file system would open for `path`, if any.
    Checked by listing the folder, so the answer is the same on every file system."""
    if os.path.lexists(path):
        return path
    try:
        entries = os.listdir(path.parent)
    except FileNotFoundError:
        return None
    key = output_key(Path(path.name))
    return next((path.parent / e for e in entries if output_key(Path(e)) == key), None)


class OutputError(Exception):
    """A transcript that can never be written where it goes: the job's own error (daemon/storage.py),
    not the storage's. The message says why, in words a person can act on."""


_WHY = {
    errno.EACCES: "the folder {folder} refuses new files (permissions): allow writing there",
    errno.EPERM: "the folder {folder} refuses new files (permissions, or made immutable with chattr +i or a "
                 "locked folder): allow writing there",
    errno.ENAMETOOLONG: "the name is too long for the outbox's file system: give the recording a shorter name",
    errno.EINVAL: "the outbox's file system does not accept this name (exFAT and FAT refuse : * ? \" < > |): "
                  "rename the recording",
    errno.EILSEQ: "the outbox's file system does not accept the characters of this name: rename the recording",
}


def refusal(error: OSError, path: Path) -> OutputError:
    """`error` (a job's own, daemon/storage.py) from writing `path`, as an OutputError that says why."""
    why = _WHY.get(error.errno or 0, "something in the outbox is in the way (a folder where the file goes, "
                                     "or a file where a folder should be): move it")
    return OutputError(f"cannot write its transcript {path}: {error.strerror or error}; "
                       f"{why.format(folder=path.parent)}, then `retry` the job")


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


def write_atomic(path: Path, data: str, mode: int = FILE_MODE) -> None:
    """Readers see the old file or the whole new one, never a partial write. `mode`: the file's
    permissions (0o600 for one that holds a secret: it has them before it has its name).

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
        os.chmod(tmp, mode)  # mkstemp creates 0600
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
