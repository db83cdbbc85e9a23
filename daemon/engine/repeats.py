"""Decoding loops: Whisper, fed its own last lines as the prompt, can write the same line over and
over across windows ("Thank you." for minutes). A line said more than MAX_REPEATS times in a row
is taken for such a loop: the repeats are dropped and the carried text is cleared to break it."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from daemon.transcript import Segment

MAX_REPEATS = 2  # "Yes. Yes." is speech; the same line a third time in a row is a loop


def _line(text: str) -> str:
    """A line as compared: letters and digits only, case folded ("Thank you." == "thank you")."""
    return "".join(c for c in unicodedata.normalize("NFKC", text).casefold() if c.isalnum())


def drop_repeats(before: Sequence[str], segments: Sequence[Segment]) -> tuple[tuple[Segment, ...], bool]:
    """`segments` without the lines that repeat the MAX_REPEATS lines before them (`before`: the
    text of the lines preceding this window, oldest first), and whether any line was dropped."""
    recent = [_line(text) for text in before[-MAX_REPEATS:]]
    kept: list[Segment] = []
    for segment in segments:
        line = _line(segment.text)
        if len(recent) == MAX_REPEATS and all(r == line for r in recent):
            continue
        kept.append(segment)
        recent = [*recent, line][-MAX_REPEATS:]
    return tuple(kept), len(kept) < len(segments)
