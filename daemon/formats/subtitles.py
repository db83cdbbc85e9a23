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


def _speaker(cue: Cue) -> str | None:
    return cue.words[0].speaker if cue.words else None  # a cue has one speaker (cues.py)


def srt(cues: Sequence[Cue]) -> str:
    """Numbered cues, a blank line between them; no cues, an empty file. A cue whose speaker is not
    the previous cue's starts with the speaker's label, `[Speaker 2] …`, as subtitle services do."""
    blocks, previous = [], None
    for n, (cue, (times, lines)) in enumerate(zip(cues, _timed(cues, ",")), 1):
        speaker = _speaker(cue)
        if speaker and speaker != previous and lines:
            lines = (f"[{speaker}] {lines[0]}", *lines[1:])
        previous = speaker
        blocks.append(f"{n}\n{times}\n" + "".join(f"{line}\n" for line in lines))
    return "\n".join(blocks)


def vtt(cues: Sequence[Cue]) -> str:
    """The WEBVTT header, then the cues, each after a blank line; a labelled speaker's cue in a voice
    span, `<v Speaker 2>…`, WebVTT's own way of saying who speaks."""
    blocks = []
    for cue, (times, lines) in zip(cues, _timed(cues, ".")):
        text = [line.translate(_VTT_ESCAPES) for line in lines]
        if (speaker := _speaker(cue)) and text:
            text[0] = f"<v {speaker.translate(_VTT_ESCAPES)}>{text[0]}"
        blocks.append(f"\n{times}\n" + "".join(f"{line}\n" for line in text))
    return "WEBVTT\n" + "".join(blocks)
