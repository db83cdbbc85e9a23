"""Machine-readable formats: JSON (segments and words, with times and probabilities), TSV
(openai-whisper's layout) and RTTM (who speaks when, diarization's exchange format). With speaker
labels, JSON has `speaker` on each segment and word and TSV a speaker column; without, they are
exactly as before."""

from __future__ import annotations

import json
import re
from typing import Any

from daemon.transcript import Segment, Transcript

_CELL_BREAKS = re.compile(r"[\t\r\n]")  # would end a TSV cell or row early


def json_text(transcript: Transcript) -> str:
    """An object: language, model, duration (and `announced_duration`, the header's, when the audio
    ended well before it; null otherwise), the speakers (when labelled) and the segments with their
    words. Times in seconds, rounded to the millisecond (as precise as the timestamps are), keys
    always in this order."""
    labelled = bool(transcript.speakers)

    def spoken(item: dict[str, Any], speaker: str | None) -> dict[str, Any]:
        return {**item, "speaker": speaker} if labelled else item

    document: dict[str, Any] = {
        "language": transcript.language,
        "model": transcript.model,
        "duration": None if transcript.duration is None else _seconds(transcript.duration),
        "announced_duration": None if transcript.announced is None else _seconds(transcript.announced),
        **({"speakers": list(transcript.speakers)} if labelled else {}),
        "segments": [
            spoken({"start": _seconds(seg.start), "end": _seconds(seg.end), "text": seg.text,
                    "words": [spoken({"start": _seconds(w.start), "end": _seconds(w.end), "word": w.text,
                                      "probability": round(w.probability, 4)}, w.speaker) for w in seg.words]},
                   seg.speaker)
            for seg in transcript.segments
        ],
    }
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


def tsv(transcript: Transcript) -> str:
    """openai-whisper's TSV: a `start end text` header, then one row per segment, times in integer
    milliseconds (no decimal mark a locale could turn into a comma); a `speaker` column when labelled."""
    labelled = bool(transcript.speakers)
    rows = ["start\tend\ttext" + ("\tspeaker" if labelled else "")]
    rows += [f"{round(1000 * seg.start)}\t{round(1000 * seg.end)}\t{_CELL_BREAKS.sub(' ', seg.text.strip())}"
             + (f"\t{seg.speaker or ''}" if labelled else "")
             for seg in transcript.segments]
    return "\n".join(rows) + "\n"


def rttm(transcript: Transcript) -> str:
    """One `SPEAKER` line per turn: `SPEAKER <file> 1 <start> <duration> <NA> <NA> <speaker> <NA> <NA>`,
    a turn being one speaker's speech up to a change of speaker or a pause of RTTM_PAUSE_SECONDS: the
    speakers' turns as the speech detection bounds them, or without them the words' times. Names
    have no spaces (`Speaker_2`); a recording without labels is all `Speaker_1`'s."""
    uri = re.sub(r"\s+", "_", transcript.name or "") or "recording"
    turns: list[list[Any]] = []  # [start, end, speaker]
    spans = ([(t.start, t.end, t.speaker) for t in transcript.turns] if transcript.turns
             else [span for seg in transcript.segments for span in _spans(seg)])
    for start, end, speaker in spans:
        name = (speaker or "Speaker 1").replace(" ", "_")
        if turns and turns[-1][2] == name and start - turns[-1][1] <= RTTM_PAUSE_SECONDS:
            turns[-1][1] = max(turns[-1][1], end)
        else:
            turns.append([start, end, name])
    return "".join(f"SPEAKER {uri} 1 {start:.3f} {max(end - start, 0.0):.3f} <NA> <NA> {name} <NA> <NA>\n"
                   for start, end, name in turns)


# A pause this long between one speaker's words ends their turn: people rarely stop that long mid-sentence.
RTTM_PAUSE_SECONDS = 1.0


def _spans(seg: Segment) -> list[tuple[float, float, str | None]]:
    """The times the segment's words are spoken (its own times, without words)."""
    if not seg.words:
        return [(seg.start, seg.end, seg.speaker)]
    return [(w.start, w.end, w.speaker or seg.speaker) for w in seg.words if w.end > w.start]


def _seconds(value: float) -> float:
    return round(value, 3)
