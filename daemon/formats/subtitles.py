"""SRT and WebVTT files of shaped cues."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from daemon.formats.cues import Cue

_VTT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})  # WebVTT cue text: no markup, no "-->"


def _clock(ms: int, separator: str) -> str:
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    seconds, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{separator}{ms:03d}"


def _timed(cues: Sequence[Cue], separator: str) -> Iterator[tuple[str, tuple[str, ...]]]:
    """Each cue's "start --> end" in whole milliseconds and its non-blank lines. A start is never
    before the previous end, and an end always after its start, so rounding cannot overlap cues."""
    last_end = 0
    for cue in cues:
        start = max(round(cue.start * 1000), last_end)
        last_end = max(round(cue.end * 1000), start + 1)
        lines = tuple(line for line in cue.lines if line.strip())  # a blank line would end the cue
        yield f"{_clock(start, separator)} --> {_clock(last_end, separator)}", lines


def srt(cues: Sequence[Cue]) -> str:
    """Numbered cues, a blank line between them; no cues, an empty file."""
    return "\n".join(f"{n}\n{times}\n" + "".join(f"{line}\n" for line in lines)
                     for n, (times, lines) in enumerate(_timed(cues, ","), 1))


def vtt(cues: Sequence[Cue]) -> str:
    """The WEBVTT header, then the cues, each after a blank line."""
    return "WEBVTT\n" + "".join(f"\n{times}\n" + "".join(f"{line.translate(_VTT_ESCAPES)}\n" for line in lines)
                                for times, lines in _timed(cues, "."))
