"""Where a transcript goes and what it is called (no torch, no database here).

Decided when the transcript is written, from the outbox of the worker writing it: the inbox's
sub-folders are mirrored (`inbox/team/a.m4a` → `outbox/team/a.srt`). Names are compared the way
macOS's default file systems compare them, ignoring case and Unicode normalisation, so that
`Meeting.m4a` and `meeting.mp3` never write the same file anywhere.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from daemon.inputs import canonical

NAME_MAX = 255  # bytes in one file name on APFS, ext4 and most other file systems
SUFFIX = ".srt"


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


def names(folder: Path, stem: str) -> Iterator[Path]:
    """`stem.srt`, then `stem (2).srt`, … in `folder`; a long stem is cut so each name fits in
    NAME_MAX bytes. Built from the input's own name, so it cannot point outside `folder`."""
    n = 1
    while True:
        suffix = SUFFIX if n == 1 else f" ({n}){SUFFIX}"
        cut = stem.encode()[: NAME_MAX - len(suffix.encode())].decode("utf-8", "ignore")
        yield folder / (cut + suffix)
        n += 1


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
