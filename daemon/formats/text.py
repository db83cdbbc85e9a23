"""Plain text: the transcript's segments as paragraphs, a new one after each long pause."""

from __future__ import annotations

from daemon.formats.cues import UNSPACED
from daemon.transcript import Transcript

# Speakers pause well under a second between sentences; a silence longer than this usually means a
# new thought or another speaker. The same length VAD counts as a real pause (vad.MIN_GAP_SECONDS).
PARAGRAPH_PAUSE_SECONDS = 2.0


def txt(transcript: Transcript) -> str:
    """One paragraph per stretch of speech, paragraphs separated by a blank line; "" for no speech.
    With speakers, a new paragraph at each change of speaker, beginning with the label: `Speaker 2: …`."""
    paragraphs: list[str] = []
    last_end: float | None = None
    speaker: str | None = None
    for seg in transcript.segments:
        words = " ".join(seg.text.split())  # a line break inside a segment would split its paragraph
        if not words:
            continue
        if seg.speaker != speaker:
            paragraphs.append(f"{seg.speaker}: {words}" if seg.speaker else words)
        elif last_end is None or seg.start - last_end > PARAGRAPH_PAUSE_SECONDS:
            paragraphs.append(words)
        else:
            paragraphs[-1] = _join(paragraphs[-1], words)
        last_end, speaker = seg.end, seg.speaker
    return "\n\n".join(paragraphs) + "\n" if paragraphs else ""


def _join(before: str, after: str) -> str:
    """Two segments' text in one paragraph: a space between them, except between CJK characters."""
    unspaced = UNSPACED.match(before[-1]) and UNSPACED.match(after[0])
    return before + after if unspaced else f"{before} {after}"
