"""What counts as an input recording, how one is named, and why one is refused (no torch here).

The watcher decides what to queue with these rules, and the worker checks them again when it
claims a job, because a file can change between the two (a failed job retried, a file replaced).
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from daemon.files.folders import SETTINGS_FILE

AUDIO_EXTENSIONS = frozenset({
    ".m4a", ".mp3", ".wav", ".flac", ".ogg", ".opus", ".aac",  # voice memos and meeting recordings
    ".aiff", ".aif", ".caf",  # Apple's uncompressed and Core Audio formats
    ".amr", ".3gp", ".wma",  # phones and older recorders
    ".mp4", ".mov", ".webm", ".mkv", ".m4v",  # the audio track of videos
})
# Names browsers and copy tools use while a file is still being written.
PARTIAL_SUFFIXES = (".part", ".crdownload", ".download", ".tmp")
HASH_BLOCK = 1 << 20


def as_text(path: Path) -> str:
    """The path as text for the database and logs: bytes that are not UTF-8 (possible in Linux
    file names) become \\xNN escapes instead of failing to encode."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def skipped_silently(path: Path) -> bool:
    """Hidden files (.DS_Store, ._*), downloads in progress and folder settings: not inputs, not
    worth a word."""
    return path.name.startswith(".") or path.name.lower().endswith(PARTIAL_SUFFIXES) or path.name == SETTINGS_FILE


def is_candidate(path: Path) -> bool:
    """Audio or video by extension, and not hidden or partial."""
    return not skipped_silently(path) and path.suffix.lower() in AUDIO_EXTENSIONS


def unsupported_reason(path: Path) -> str:
    return (f"{path.suffix or 'no extension'} is not a recording format whisper-daemon takes "
            f"(it takes {', '.join(sorted(AUDIO_EXTENSIONS))})")


def canonical(path: Path, *, follow_link: bool = False) -> Path:
    """One spelling per file: absolute, its folder's real path (no `..`, no linked folders), and the
    name as the folder lists it (a case- or normalisation-insensitive file system such as macOS's
    accepts other spellings of the same name). The last component is followed only when asked:
    a link dropped into the inbox stays a link, so that it can be refused."""
    path = Path(os.path.abspath(path))
    if follow_link:
        return Path(os.path.realpath(path))
    folder = Path(os.path.realpath(path.parent))
    return folder / _listed_name(folder, path.name)


def _listed_name(folder: Path, name: str) -> str:
    try:
        if not os.path.lexists(folder / name):
            return name
        entries = _listing(folder)
    except OSError:
        return name
    if name in entries:
        return name
    # Reached through another spelling: find the entry that is the same file.
    target = os.lstat(folder / name)
    for entry in entries:
        try:
            st = os.lstat(folder / entry)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            return entry
    return name


# The names in the folders looked at last, each with the folder's mtime when it was listed: queueing
# the files of one folder lists it once while it does not change, not once per file (10,000 files
# were 10,000 listings of 10,000 names). A file added in the same clock tick as the listing (the
# kernel's coarse clock: milliseconds) is missing from it; its name is then taken as given, which
# is right for every name the watcher gives (it lists them).
_LISTINGS: dict[Path, tuple[int, frozenset[str]]] = {}
LISTINGS_KEPT = 64


def _listing(folder: Path) -> frozenset[str]:
    mtime = os.stat(folder).st_mtime_ns
    cached = _LISTINGS.get(folder)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    names = frozenset(os.listdir(folder))
    if len(_LISTINGS) >= LISTINGS_KEPT:
        _LISTINGS.pop(next(iter(_LISTINGS)), None)
    _LISTINGS[folder] = (mtime, names)
    return names


def refusal(path: Path) -> str | None:
    """Why a file is not transcribed at all, or None. Checked without following a link."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return "the file is gone (deleted or moved away before it could be transcribed)"
    except OSError as e:
        return f"cannot read the file: {e.strerror}"
    if stat.S_ISLNK(st.st_mode):
        # Only files really in the inbox are read: a link could pull any file the user can read
        # (from a shared inbox, say) into a transcript.
        return "it is a symbolic link; links are not followed (copy or move the file in instead)"
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file (a folder, device or pipe)"
    if as_text(path) != str(path):
        return "its name is not valid UTF-8; rename the file"
    if not os.access(path, os.R_OK):
        return "cannot read the file: Permission denied"  # as strerror says it
    return None


@dataclass(frozen=True)
class Fingerprint:
    """What identifies a file's content: size and mtime are cheap, the hash is certain."""

    size: int
    mtime_ns: int
    sha256: str


def fingerprint(path: Path) -> Fingerprint:
    """Size, mtime and SHA-256 of the file's bytes, read without following a final link (O_NOFOLLOW)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        digest = hashlib.sha256()
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    return Fingerprint(st.st_size, st.st_mtime_ns, digest.hexdigest())
