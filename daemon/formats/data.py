"""Machine-readable formats: JSON (segments and words, with times and probabilities) and TSV
(openai-whisper's layout)."""

from __future__ import annotations

import json
import re

from daemon.transcript import Transcript

_CELL_BREAKS = re.compile(r"[\t\r\n]")  # would end a TSV cell or row early


def json_text(transcript: Transcript) -> str:
    """An object: language, model, duration (and `announced_duration`, the header's, when the audio
    ended well before it; null otherwise), and the segments with their words. Times in seconds,
    rounded to the millisecond (as precise as the timestamps are), keys always in this order."""
    document = {
        "language": transcript.language,
        "model": transcript.model,
        "duration": None if transcript.duration is None else _seconds(transcript.duration),
        "announced_duration": None if transcript.announced is None else _seconds(transcript.announced),
        "segments": [
            {"start": _seconds(seg.start), "end": _seconds(seg.end), "text": seg.text,
             "words": [{"start": _seconds(w.start), "end": _seconds(w.end), "word": w.text,
                        "probability": round(w.probability, 4)} for w in seg.words]}
            for seg in transcript.segments
        ],
    }
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


def tsv(transcript: Transcript) -> str:
    """openai-whisper's TSV: a `start end text` header, then one row per segment, times in integer
    milliseconds (no decimal mark a locale could turn into a comma)."""
    rows = ["start\tend\ttext"]
    rows += [f"{round(1000 * seg.start)}\t{round(1000 * seg.end)}\t{_CELL_BREAKS.sub(' ', seg.text.strip())}"
             for seg in transcript.segments]
    return "\n".join(rows) + "\n"


def _seconds(value: float) -> float:
    return round(value, 3)
