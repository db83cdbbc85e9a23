"""The output formats: each renders a whole transcript as the text of one file."""

from __future__ import annotations

from daemon.config import FORMATS, CueRules
from daemon.formats import cues, data, subtitles, text
from daemon.transcript import Transcript


def render(fmt: str, transcript: Transcript, rules: CueRules) -> str:
    """`transcript` in format `fmt`; `rules` shape the cues of the subtitle formats."""
    if fmt == "srt":
        return subtitles.srt(cues.shape(transcript.segments, rules))
    if fmt == "vtt":
        return subtitles.vtt(cues.shape(transcript.segments, rules))
    if fmt == "txt":
        return text.txt(transcript)
    if fmt == "json":
        return data.json_text(transcript)
    if fmt == "tsv":
        return data.tsv(transcript)
    if fmt == "rttm":
        return data.rttm(transcript)
    raise ValueError(f"unknown output format {fmt!r}: choose from {', '.join(FORMATS)}")
