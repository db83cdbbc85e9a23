"""Every output format, rendered from a hand-built transcript: SRT and VTT (cues shaped by
formats/cues.py, tested in test_cues.py), plain paragraphs, JSON and openai-whisper's TSV."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import srt
from whisper.utils import get_writer

from daemon.formats import FORMATS, render
from daemon.formats.cues import CueRules
from daemon.formats.text import PARAGRAPH_PAUSE_SECONDS
from daemon.transcript import Segment, Transcript, Word

RULES = CueRules()


def _segment(start: float, words: list[tuple[float, float, str, float]]) -> Segment:
    timed = tuple(Word(*w) for w in words)
    return Segment(start, timed[-1].end, "".join(w.text for w in timed).strip(), words=timed)


TALK = Transcript(
    segments=(
        _segment(0.0, [(0.0, 0.4, " Hello", 0.98765), (0.4, 0.9, " there.", 0.91234)]),
        _segment(1.2, [(1.2, 1.5, " Café", 0.5), (1.5, 2.0123456, " au\tlait?", 0.87654321)]),
        _segment(2.0 + PARAGRAPH_PAUSE_SECONDS + 1, [(5.0, 5.5, " Later,", 0.99), (5.5, 6.25, " much later.", 0.75)]),
    ),
    language="en", model="tiny.en", duration=6.5004,
)


def test_srt_and_vtt_show_every_word_in_valid_cues() -> None:
    cues = list(srt.parse(render("srt", TALK, RULES)))
    assert " ".join(c.content for c in cues).split() == "Hello there. Café au lait? Later, much later.".split()
    assert all(a.end <= b.start for a, b in zip(cues, cues[1:]))
    vtt = render("vtt", TALK, RULES)
    assert vtt.startswith("WEBVTT") and "Café" in vtt and "-->" in vtt


def test_txt_is_paragraphs_split_at_long_pauses() -> None:
    assert render("txt", TALK, RULES) == "Hello there. Café au lait?\n\nLater, much later.\n"
    spaced = Transcript((Segment(0.0, 1.0, "one"), Segment(1.0 + PARAGRAPH_PAUSE_SECONDS, 4.0, "two\nlines"),
                         Segment(4.5, 5.0, "  "), Segment(5.0, 6.0, " three ")))
    assert render("txt", spaced, RULES) == "one two lines three\n"  # a pause of exactly the limit, a blank segment
    assert render("txt", Transcript(()), RULES) == ""


def test_txt_puts_no_space_between_cjk_characters() -> None:
    chinese = Transcript((Segment(0.0, 1.0, "我们今天开会。"), Segment(1.2, 2.0, "先看第一项"),
                          Segment(2.1, 3.0, "Kubernetes"), Segment(3.1, 4.0, "的部署。")))
    assert render("txt", chinese, RULES) == "我们今天开会。先看第一项 Kubernetes 的部署。\n"
    japanese = Transcript((Segment(0.0, 1.0, "こんにちは"), Segment(1.2, 2.0, "カタカナ")))
    assert render("txt", japanese, RULES) == "こんにちはカタカナ\n"
    korean = Transcript((Segment(0.0, 1.0, "안녕하세요"), Segment(1.2, 2.0, "여러분")))
    assert render("txt", korean, RULES) == "안녕하세요 여러분\n"  # Korean puts spaces between words


def test_json_has_segments_and_words_with_times_and_probabilities() -> None:
    text = render("json", TALK, RULES)
    assert "Café" in text  # not \u00e9
    document = json.loads(text)
    assert list(document) == ["language", "model", "duration", "announced_duration", "segments"]
    assert document["announced_duration"] is None  # the audio did not end early
    assert (document["language"], document["model"], document["duration"]) == ("en", "tiny.en", 6.5)
    assert [s["text"] for s in document["segments"]] == [s.text for s in TALK.segments]
    second = document["segments"][1]
    assert list(second) == ["start", "end", "text", "words"]
    assert (second["start"], second["end"]) == (1.2, 2.012)  # rounded to the millisecond
    assert second["words"] == [
        {"start": 1.2, "end": 1.5, "word": " Café", "probability": 0.5},
        {"start": 1.5, "end": 2.012, "word": " au\tlait?", "probability": 0.8765},
    ]
    unknown = json.loads(render("json", Transcript((Segment(0.0, 1.0, "old row"),)), RULES))
    assert unknown == {"language": None, "model": None, "duration": None, "announced_duration": None,
                       "segments": [{"start": 0.0, "end": 1.0, "text": "old row", "words": []}]}


def test_tsv_is_what_openai_whisper_writes(tmp_path: Path) -> None:
    result = {"segments": [{"start": s.start, "end": s.end, "text": " " + s.text} for s in TALK.segments]}
    get_writer("tsv", str(tmp_path))(result, "talk.wav")
    assert render("tsv", TALK, RULES) == (tmp_path / "talk.tsv").read_text(encoding="utf-8")
    assert render("tsv", TALK, RULES).splitlines()[2] == "1200\t2012\tCafé au lait?"  # the tab is a space
    broken = Transcript((Segment(0.0, 1.0, "two\nlines\r\nhere"),))
    assert render("tsv", broken, RULES) == "start\tend\ttext\n0\t1000\ttwo lines  here\n"  # one row each


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_renders_a_transcript_without_words(fmt: str) -> None:
    """Segments stored before word timing existed have no words: every format still renders them."""
    old = Transcript((Segment(0.0, 2.0, "Stored before word timing."),), "en", "tiny.en", 2.0)
    # RTTM says who speaks when, not what: the segment's time as one turn.
    expected = "SPEAKER recording 1 0.000 2.000 <NA> <NA> Speaker_1" if fmt == "rttm" else "Stored before word timing."
    assert expected in render(fmt, old, RULES)


def test_an_unknown_format_is_named() -> None:
    with pytest.raises(ValueError, match="'docx'.*srt, vtt, txt, json, tsv"):
        render("docx", TALK, RULES)
