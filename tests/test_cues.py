"""Subtitle cues: each rule of daemon/formats/cues.py, its checker, and the SRT and VTT files."""

from __future__ import annotations

import math
import random
import re
from dataclasses import replace

import pytest
import srt

from daemon.formats.cues import PAUSE_SECONDS, Cue, CueRules, shape, violations, words_of
from daemon.formats.subtitles import srt as render_srt
from daemon.formats.subtitles import vtt as render_vtt
from daemon.transcript import Segment, Word

RULES = CueRules()
ONE_LINE = CueRules(lines=1)


def said(text: str, start: float = 0.0, step: float = 0.3) -> Segment:
    """`text` spoken one word every `step` seconds from `start`: English split at spaces, Chinese
    one word per character."""
    parts = [" " + p for p in text.split()] if text.isascii() else list(text)
    words = tuple(Word(start + k * step, start + (k + 1) * step, p) for k, p in enumerate(parts))
    return Segment(start, words[-1].end, "".join(w.text for w in words).strip(), words=words)


def texts(cues: list[Cue]) -> list[tuple[str, ...]]:
    return [c.lines for c in cues]


def shown_words(cues: list[Cue]) -> list[Word]:
    return [w for c in cues for w in c.words]


def bare(text: str) -> str:
    return "".join(text.split())


def test_latin_lines_have_at_most_42_characters_and_cues_two_lines() -> None:
    segment = said("So the thing about the project, as I was saying to Maria yesterday, is that we never "
                   "really planned for the growth we got, and nobody knew who was responsible for it.")
    cues = shape([segment])
    assert all(len(line) <= 42 for c in cues for line in c.lines)
    assert all(len(c.lines) <= 2 for c in cues) and any(len(c.lines) == 2 for c in cues)
    assert shown_words(cues) == list(segment.words)


def test_cjk_lines_have_at_most_16_characters_and_no_spaces_put_between_them() -> None:
    text = "我们今天讨论的是这个项目的进展情况，大家都知道，上个月服务器出了很多问题。"
    cues = shape([said(text)])
    lines = [line for c in cues for line in c.lines]
    assert all(len(line) <= 16 for line in lines) and max(map(len, lines)) > 10
    assert "".join(lines) == text  # no space inserted, nothing lost


def test_the_lines_setting_caps_the_lines_of_a_cue() -> None:
    segment = said("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen")
    assert all(len(c.lines) == 1 and len(c.lines[0]) <= 42 for c in shape([segment], ONE_LINE))
    three = shape([segment], CueRules(lines=3, line_chars=20))
    assert max(len(c.lines) for c in three) == 3 and all(len(line) <= 20 for c in three for line in c.lines)


def test_two_lines_are_balanced_with_the_longer_one_at_the_bottom() -> None:
    # 11 five-letter words: 65 characters, no punctuation or conjunction to break at.
    (cue,) = shape([said("alpha bravo charl delta echos foxes golfs hotel india julia kilos")])
    top, bottom = cue.lines
    assert (len(top), len(bottom)) == (29, 35)  # 5 words above 6: as even as words allow, bottom longer


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        # A sentence end beats a comma and a conjunction nearer the middle.
        ("It is over now. Then, we all went back and slept",
         ("It is over now.", "Then, we all went back and slept")),
        # A comma beats a conjunction and the middle.
        ("After the long rain stopped, we waited and nobody complained",
         ("After the long rain stopped,", "we waited and nobody complained")),
        # A conjunction beats the middle.
        ("Maria laughed loudly and everybody else smiled quietly together",
         ("Maria laughed loudly", "and everybody else smiled quietly together")),
    ],
)
def test_lines_break_at_sentence_end_then_punctuation_then_conjunction(text: str, lines: tuple[str, ...]) -> None:
    assert [line for c in shape([said(text)]) for line in c.lines] == list(lines)


def test_cues_end_at_sentence_ends_rather_than_filling_up() -> None:
    first = "The meeting started late because the projector did not work."
    second = "After twenty minutes someone found a cable in the cupboard."
    cues = shape([said(f"{first} {second}")])
    assert [" ".join(c.lines) for c in cues] == [first, second]


def test_a_new_sentence_starts_a_line() -> None:
    cues = shape([said("We stayed inside and played cards with the neighbours. Then we all slept.")])
    assert texts(cues) == [("We stayed inside and played cards", "with the neighbours."), ("Then we all slept.",)]


def test_a_sentence_across_two_segments_is_one_cue() -> None:
    cues = shape([said("I think that we should", 0.0), said("go home now.", 1.6)])
    assert texts(cues) == [("I think that we should go home now.",)]


def test_a_long_pause_ends_a_cue_even_when_the_words_would_fit() -> None:
    cues = shape([said("Hello there,", 0.0), said("how are you?", 0.6 + PAUSE_SECONDS + 0.1)])
    assert texts(cues) == [("Hello there,",), ("how are you?",)]


def test_no_cue_lasts_longer_than_max_seconds() -> None:
    slow = said(" ".join(["word"] * 30), step=0.9)  # 27 s of slow speech, no pause long enough to end a cue
    cues = shape([slow])
    assert len(cues) > 1 and all(c.end - c.start <= RULES.max_seconds + 1e-9 for c in cues)
    assert all(c.words[-1].end - c.words[0].start <= RULES.max_seconds for c in cues)  # nor do its words
    assert shown_words(cues) == list(slow.words)


def test_a_short_cue_lasts_min_seconds_where_the_next_one_allows() -> None:
    alone = shape([said("Hi there.", 0.0, 0.1), said("Nice to see you.", 3.0)])
    assert alone[0].end == pytest.approx(RULES.min_seconds)
    # The next cue (too long to share its line) starts at 0.5 s: the first ends a gap before it.
    crowded = shape([said("Hi there.", 0.0, 0.1), said("Nice to see you again after all this time.", 0.5)], ONE_LINE)
    assert texts(crowded)[0] == ("Hi there.",)
    assert crowded[0].end == pytest.approx(0.5 - RULES.gap_seconds) and crowded[1].start == pytest.approx(0.5)


def test_a_fast_cue_extends_into_the_gap_to_be_read() -> None:
    fast = "Quick brown foxes jump over lazy dogs."  # 38 characters: 1.9 s at 20 per second
    relaxed = shape([said(fast, 0.0, 0.14), said("Then they rest.", 5.0)], ONE_LINE)
    assert relaxed[0].end == pytest.approx(38 / RULES.chars_per_second)
    hurried = shape([said(fast, 0.0, 0.14), said("Then they rest.", 1.5)], ONE_LINE)
    assert hurried[0].end == pytest.approx(1.5 - RULES.gap_seconds)  # as far as the next cue allows


def test_cues_keep_order_and_gaps_whatever_times_the_alignment_gave() -> None:
    nan = float("nan")
    times = [(0.0, 1.0), (0.5, 0.4), (0.5, 0.5), (0.2, 0.3), (0.5, 0.5), (nan, 2.0), (1.0, nan),
             (3.0, 2.0), (3.0, 3.0), (-1.0, 9.0), (3.1, 3.1), (3.1, 3.1)]
    words = tuple(Word(s, e, f" {'abcdefghijkl'[k] * 15}") for k, (s, e) in enumerate(times))
    segments = [Segment(0.0, 3.1, "".join(w.text for w in words).strip(), words=words)]
    cues = shape(segments)
    assert shown_words(cues) == list(words)  # the words are kept; only the times are fixed
    assert len(cues) > 1
    for cue in cues:
        assert math.isfinite(cue.start) and 0 <= cue.start < cue.end
    for before, after in zip(cues, cues[1:]):
        assert after.start >= before.end + RULES.gap_seconds - 1e-9
    assert violations(cues, segments) == []


def test_no_one_word_cue_when_the_word_fits_with_a_neighbour() -> None:
    # Both would be cues of their own but for the rule: each is a sentence, with time to read it.
    cues = shape([said("Okay.", 0.0), said("Let's get started with the meeting.", 1.2)])
    assert all(len(c.words) > 1 for c in cues)
    cues = shape([said("We are done with everything for today, thank you all for coming.", 0.0), said("Bye.", 4.2)])
    assert all(len(c.words) > 1 for c in cues)


def test_a_lone_word_between_long_pauses_is_a_cue_of_its_own() -> None:
    segments = [said("Are you ready?", 0.0), said("Yes.", 3.0), said("Then let us go.", 6.0)]
    cues = shape(segments)
    assert texts(cues) == [("Are you ready?",), ("Yes.",), ("Then let us go.",)]
    assert violations(cues, segments) == []  # the checker knows the pause rule too


def test_a_word_longer_than_a_line_gets_a_line_of_its_own() -> None:
    url = "https://example.com/a/very/long/path/that/never/ends/at/all"
    segments = [said(f"Please open {url} and read it.")]
    cues = shape(segments)
    assert url in [line for c in cues for line in c.lines]
    assert violations(cues, segments) == []


def test_segments_stored_without_words_get_words_from_their_text() -> None:
    old = Segment(2.0, 6.0, "Hello world, this is old.")
    words = words_of(old)
    assert [w.text for w in words] == [" Hello", " world,", " this", " is", " old."]
    assert words[0].start == 2.0 and words[-1].end == pytest.approx(6.0)
    assert words[1].end - words[1].start == pytest.approx(4.0 * 6 / 21)  # 6 of its 21 characters
    chinese = Segment(0.0, 1.0, "你好，世界。")
    assert [w.text for w in words_of(chinese)] == ["你", "好，", "世", "界。"]
    cues = shape([old, chinese])
    assert bare("".join(line for c in cues for line in c.lines)) == "Helloworld,thisisold.你好，世界。"
    assert violations(cues, [old, chinese]) == []


def test_an_empty_transcript_has_no_cues() -> None:
    assert shape([]) == [] and shape([Segment(0.0, 1.0, "")]) == []


def random_transcript(rng: random.Random) -> list[Segment]:
    """Up to 8 segments of Latin, CJK and over-long words, some without words, with times as bad as
    an alignment can give: zero-length words, words going back, overlapping, long pauses."""
    vocabulary = ["a", "I", "the", "and", "to", "project", "responsibility", "yes,", "no.", "okay?",
                  "https://example.com/a/very/long/path/that/never/ends", "我", "们", "好，", "项目。", "です"]
    segments, t = [], rng.uniform(0, 3)
    for _ in range(rng.randint(0, 8)):
        words = []
        for _ in range(rng.randint(1, 25)):
            text = rng.choice(vocabulary)
            start = t + rng.choice([-0.5, -0.05, 0, 0, 0.02, 0.3, 1.2, 3])
            length = rng.choice([0, 0.01, 0.1, 0.3, 0.8, 2.5, 9]) * rng.choice([1, 1, -1])
            words.append(Word(start, start + length, text if text[0] > "~" else " " + text))
            t = max(t, start + length)
        text = "".join(w.text for w in words).strip()
        segments.append(Segment(words[0].start, t, text, words=tuple(words) if rng.random() > 0.3 else ()))
    return segments


def test_random_transcripts_keep_every_word_and_break_no_rule() -> None:
    rng = random.Random(12)
    for _ in range(300):
        segments = random_transcript(rng)
        rules = rng.choice([RULES, ONE_LINE, CueRules(lines=3, line_chars=30, max_seconds=4.0)])
        cues = shape(segments, rules)
        assert [w.text for w in shown_words(cues)] == [w.text for s in segments for w in words_of(s)]
        assert bare("".join(line for c in cues for line in c.lines)) == bare("".join(s.text for s in segments))
        assert violations(cues, segments, rules) == [], segments


# The checker: a good cue list, and each rule broken by hand.
SEGMENTS = [said("Hello there, my friend.", 0.0, 0.5), said("How are you today?", 3.0, 0.5)]
W1, W2 = SEGMENTS[0].words, SEGMENTS[1].words
GOOD = [Cue(0.0, 2.0, ("Hello there, my friend.",), W1), Cue(3.0, 5.0, ("How are you today?",), W2)]


def test_the_checker_passes_good_cues() -> None:
    assert violations(GOOD, SEGMENTS) == []


@pytest.mark.parametrize(
    ("cues", "message"),
    [
        ([Cue(0.0, 5.0, (" ".join(["Hello there, my friend."] * 2),), W1 + W1)], "line 1 has 47 characters (max 42)"),
        ([Cue(0.0, 2.0, ("Hello", "there,", "my friend."), W1), GOOD[1]], "cue 1: 3 lines (max 2)"),
        ([replace(GOOD[0], end=7.5), replace(GOOD[1], start=7.6, end=9.0)], "cue 1: lasts 7.500 s (max 7.0)"),
        ([replace(GOOD[0], end=0.5), GOOD[1]], "cue 1: lasts 0.500 s (min 0.833) though the next cue leaves room"),
        ([replace(GOOD[0], end=2.0), replace(GOOD[1], start=1.5)], "cue 2: starts at 1.500, overlapping cue 1"),
        ([GOOD[0], replace(GOOD[1], start=2.05)], "cue 2: starts 0.050 s after cue 1"),
        ([GOOD[1], GOOD[0]], "cue 2: starts at 0.000, before cue 1"),
        ([replace(GOOD[0], start=1.0, end=1.0), GOOD[1]], "cue 1: ends at 1.000, not after its start"),
        ([Cue(0.0, 1.4, ("Hello there, my",), W1[:3]), Cue(1.5, 2.4, ("friend.",), W1[3:]), GOOD[1]],
         "cue 2: its one word ' friend.' fits in cue 1"),
        ([GOOD[0]], "word 5: the cues show [] where the transcript has [' How']"),
        ([GOOD[0], GOOD[0], GOOD[1]], "word 5: the cues show [' Hello'] where the transcript has [' How']"),
        ([replace(GOOD[0], words=(W1[1], W1[0]) + W1[2:]), GOOD[1]], "word 1: the cues show [' there,'] where"),
        ([replace(GOOD[0], lines=("Hello there, my enemy.",)), GOOD[1]], "cue 1: its lines ('Hello there, my enemy.',)"),
    ],
)
def test_the_checker_reports_each_broken_rule(cues: list[Cue], message: str) -> None:
    assert any(message in v for v in violations(cues, SEGMENTS)), violations(cues, SEGMENTS)


def test_the_checker_blames_short_or_fast_cues_only_when_they_could_last_longer() -> None:
    fast = [replace(GOOD[0], end=0.9), GOOD[1]]  # 23 characters in 0.9 s: 25.6 per second
    assert violations(fast, SEGMENTS) == ["cue 1: 23 characters in 0.900 s, though it could last until 2.920"]
    assert violations([replace(GOOD[0], end=0.9), replace(GOOD[1], start=0.98)], SEGMENTS) == []
    assert violations([replace(GOOD[0], end=0.5), replace(GOOD[1], start=0.58)], SEGMENTS) == []


def test_srt_parses_back_with_increasing_times_and_the_same_text() -> None:
    segments = [said("So the thing about the project, as I was saying to Maria yesterday, is that we never "
                     "really planned for it.", 3600.0), said("Fine.", 3610.0)]
    cues = shape(segments)
    parsed = list(srt.parse(render_srt(cues)))
    assert [p.content for p in parsed] == ["\n".join(c.lines) for c in cues]
    assert [p.index for p in parsed] == list(range(1, len(cues) + 1))
    assert parsed[0].start.total_seconds() == pytest.approx(cues[0].start, abs=0.001) and parsed[0].start.seconds >= 3600
    for before, after in zip(parsed, parsed[1:]):
        assert before.start < before.end <= after.start


def test_srt_times_are_whole_milliseconds_that_rounding_cannot_overlap() -> None:
    cues = [Cue(1.0, 1.0006, ("a",), ()), Cue(1.0004, 1.0009, ("b",), ()), Cue(3725.0099, 3726.0, ("c",), ())]
    assert render_srt(cues) == ("1\n00:00:01,000 --> 00:00:01,001\na\n\n"
                                "2\n00:00:01,001 --> 00:00:01,002\nb\n\n"
                                "3\n01:02:05,010 --> 01:02:06,000\nc\n")
    assert render_srt([]) == ""


VTT_CUE = re.compile(r"(\d\d):(\d\d):(\d\d)\.(\d{3}) --> (\d\d):(\d\d):(\d\d)\.(\d{3})\n((?:.+\n)+)")


def parse_vtt(text: str) -> list[tuple[float, float, str]]:
    header, _, body = text.partition("\n\n")
    assert header == "WEBVTT"
    blocks = body.split("\n\n") if body else []
    found = []
    for block in blocks:
        match = VTT_CUE.fullmatch(block if block.endswith("\n") else block + "\n")
        assert match, block
        h, m, s, ms, h2, m2, s2, ms2 = map(int, match.groups()[:8])
        found.append((h * 3600 + m * 60 + s + ms / 1000, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000, match[9].rstrip("\n")))
    return found


def test_vtt_parses_back_with_increasing_times_and_escaped_text() -> None:
    segments = [said("Tom & Jerry <live> say a -> b, or b <- a.", 0.0), said("The end.", 5.0)]
    cues = shape(segments)
    parsed = parse_vtt(render_vtt(cues))
    unescaped = [text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&") for _, _, text in parsed]
    assert unescaped == ["\n".join(c.lines) for c in cues]
    assert "<" not in render_vtt(cues) and "a -&gt; b, or b &lt;- a." in render_vtt(cues)
    assert "Tom &amp; Jerry &lt;live&gt;" in render_vtt(cues)
    for (start, end, _), (following, _, _) in zip(parsed, parsed[1:]):
        assert start < end <= following
    assert render_vtt([]) == "WEBVTT\n"
