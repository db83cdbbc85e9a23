"""Subtitle cues from a transcript's timed words, shaped by the rules professional subtitlers follow
(Netflix's timed-text style guide, the BBC's subtitle guidelines), and a checker of those rules.

The cues are chosen like Knuth–Plass breaks a paragraph into lines: dynamic programming over the
points between words. Every run of words that fits the hard limits (lines, characters per line,
seconds, no long pause inside) is a candidate cue, laid out in its best lines by a smaller
dynamic programme of the same kind, and costed: where it and its lines break, how even its lines
are, how fast it must be read, how short it must be, whether it is a lone word. The cheapest
sequence of cues wins; one pass then sets their times: reading time, minimum length and gaps.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate

from daemon.config import CueRules
from daemon.transcript import Segment, Word


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    lines: tuple[str, ...]
    words: tuple[Word, ...]  # the transcript's words this cue shows, in order


PAUSE_SECONDS = 1.0  # a silence this long ends a cue: no text is shown before it is spoken
FRAME_SECONDS = 1 / 25  # one frame at 25 fps, the slowest common rate: a shorter cue may never show
TOLERANCE = 0.001  # the checker's slack for times: SRT and VTT keep whole milliseconds

# Costs are in units of one break mid-phrase ("anywhere"), the break every other is weighed against.
ANYWHERE = 1.0
BEFORE_CONJUNCTION = 0.6  # a phrase boundary without punctuation
SEGMENT_END = 0.4  # whisper ended a segment here: a phrase boundary, if unpunctuated
CLAUSE = 0.3  # after a comma, semicolon, colon or dash
MID_LINE_SENTENCE = 0.5  # a sentence ending inside a line: a cue should hold one sentence (BBC 3.2)
CUE = 0.2  # of two otherwise equal choices, the one with fewer cues
CUE_END = 2.0  # a break costs twice as much between cues: the reader waits for the phrase's end
# Uneven lines cost BALANCE × the spread of their unused widths: lines of 20 and 40 characters out
# of 42 cost 0.2, less than what breaking at a comma instead of anywhere saves (0.7).
BALANCE = 2.0
TILT = 0.1  # a lower line's unused width counts 10% more: when lines cannot be even, the bottom one is longer
SPEED = 1.0  # per 100% over the reading speed, up to 100%: twice as fast is as unreadable as it gets
SHORT = 1.0  # a cue that cannot last min_seconds: 1.0 when it has no time at all
ORPHAN = 10.0  # a lone word costs more than all other costs of the cues around it
_CLOSE = "\"'”’)\\]」』）"  # closing quotes and brackets stay with the mark before them
SENTENCE_END = re.compile(f"[.?!。？！…][{_CLOSE}]*$")
CLAUSE_END = re.compile(f"[,;:，、；：—–][{_CLOSE}]*$")
# English words a phrase starts with: a line or cue is better broken before them than elsewhere.
CONJUNCTIONS = frozenset(
    "and but or nor so yet because although though while if when where which who that than "
    "to of in on at for with from by about into as".split()
)
_UNSPACED = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff"  # kana, Han
_CJK_MARKS = "\u2e80-\u303f\uff00-\uffef"  # CJK symbols and punctuation, full-width forms
UNSPACED = re.compile(f"[{_UNSPACED}{_CJK_MARKS}]")  # written without spaces between them (not Hangul)
_CJK = re.compile(f"[{_UNSPACED}{_CJK_MARKS}\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]")  # and Hangul
# A word: a kana or Han character, or a run of other characters up to a space or one of those;
# either with the punctuation after it.
_WORD = re.compile(f"\\s*(?:[{_UNSPACED}][^\\s\\w]*|[^\\s{_UNSPACED}]+)")


def words_of(segment: Segment) -> tuple[Word, ...]:
    """The segment's words. Segments stored before word timing get words cut from their text (at
    spaces, and around each kana and Han character), timed in proportion to their characters."""
    if segment.words:
        return segment.words
    found = [(m.group()[0].isspace(), m.group().lstrip()) for m in _WORD.finditer(segment.text.strip())]
    total = sum(len(core) for _, core in found)
    span = max(segment.end - segment.start, 0.0)
    words, done = [], 0
    for k, (spaced, core) in enumerate(found):
        start = segment.start + span * done / total
        done += len(core)
        lead = " " if spaced or (k == 0 and not UNSPACED.match(core)) else ""  # as whisper writes words
        words.append(Word(start, segment.start + span * done / total, lead + core, speaker=segment.speaker))
    return tuple(words)


def _most(length: int, cjk: int, rules: CueRules) -> int:
    """The characters a line of `length` with `cjk` CJK ones may have: cjk_line_chars if most are."""
    return rules.cjk_line_chars if 2 * cjk > length else rules.line_chars


def _break_cost(word: str, after: str, segment_ends: bool) -> float:
    """The cost of a line or cue ending after `word`, followed by `after` (lower case, stripped)."""
    if SENTENCE_END.search(word.strip()) or not after:
        return 0.0
    cost = CLAUSE if CLAUSE_END.search(word.strip()) else ANYWHERE
    cost = min(cost, SEGMENT_END) if segment_ends else cost
    return min(cost, BEFORE_CONJUNCTION) if after in CONJUNCTIONS else cost


@dataclass(frozen=True, slots=True)
class Layout:
    """The inner programme's state: the cheapest layout found for a run of words in a number of lines."""

    cost: float  # of its line breaks, uneven lines and sentences ending inside a line
    last_line: int  # the word its last line starts with


NO_LAYOUT = Layout(math.inf, -1)  # the words do not fit in that many lines


@dataclass(frozen=True, slots=True)
class Candidate:
    """A cue the outer programme may choose: words first..end-1, laid out in their best lines."""

    first: int
    end: int
    line_starts: tuple[int, ...]  # the word each line starts with, the first one's being `first`
    cost: float  # its layout's and its own (end, reading speed, shortness, a lone word)


@dataclass(frozen=True, slots=True)
class Plan:
    """The outer programme's state: the cheapest cues found that show every word before a point."""

    cost: float
    last: Candidate | None  # the last of those cues (None: no words yet); the one before ends at last.first


class _Words:
    """A transcript's words, with cleaned times and prefix sums that make any run's cost quick."""

    def __init__(self, segments: Sequence[Segment], rules: CueRules) -> None:
        self.rules = rules
        per_segment = [words_of(s) for s in segments]
        self.words = [w for ws in per_segment for w in ws]
        segment_ends = {count - 1 for count in accumulate(map(len, per_segment))}
        self.starts, self.ends, last = [], [], 0.0
        for w in self.words:  # alignment errors: starts never go back, ends never precede starts
            last = max(w.start, last) if math.isfinite(w.start) else last
            self.starts.append(last)
            self.ends.append(max(w.end, last) if math.isfinite(w.end) else last)
        # [k]: the latest a cue ending with word k may end, a gap before the next word
        self.latest = [s - rules.gap_seconds for s in self.starts[1:]] + [math.inf]
        # [k]: whether a cue must end with word k, whatever it costs: a long pause follows. Any other
        # hard break between two words belongs here too; shape never puts a cue across one: a change
        # of speaker is one (a cue never holds two people's words).
        self.must_end = [b - a > PAUSE_SECONDS or w.speaker != after.speaker
                         for a, b, w, after in zip(self.ends, self.starts[1:], self.words, self.words[1:])] + [True]
        texts = [w.text for w in self.words]  # prefix sums of characters, CJK ones, sentence ends:
        self.chars = [0, *accumulate(map(len, texts))]
        self.cjk = [0, *accumulate(len(_CJK.findall(t)) for t in texts)]
        self.sentences = [0, *accumulate(bool(SENTENCE_END.search(t.strip())) for t in texts)]
        self.lead = [len(t) - len(t.lstrip()) for t in texts]
        after = [t.strip().lower() for t in texts[1:]] + [""]
        # [k]: what a line or cue ending with word k costs (0 at a sentence's end)
        self.break_cost = [_break_cost(t, a, k in segment_ends) for k, (t, a) in enumerate(zip(texts, after))]
        # [n]: the sum of the weights of n lines' unevenness (TILT: a lower line's counts more)
        self.line_weights = [sum(1 / (1 + TILT * k) for k in range(n)) for n in range(rules.lines + 1)]

    def line(self, s: int, e: int) -> tuple[int, int, int]:
        """Characters of a line of words s..e-1, how many of them are CJK, and the most it may have."""
        length = self.chars[e] - self.chars[s] - self.lead[s]
        cjk = self.cjk[e] - self.cjk[s]
        return length, cjk, _most(length, cjk, self.rules)

    def cues_from(self, first: int) -> Iterator[Candidate]:
        """Every cue of words first..end-1 within the hard limits, in the fewest lines it fits in
        (Netflix: one line if it fits), laid out as well as it can be."""
        r = self.rules
        layouts: dict[int, list[Layout]] = {}  # [end][breaks]: words first..end-1 with that many line breaks
        for end in range(first + 1, len(self.words) + 1):
            if end - first > 1 and (self.must_end[end - 2]
                                    or min(self.ends[end - 1], self.latest[end - 1]) - self.starts[first]
                                    > r.max_seconds):
                return
            # A cue takes the fewest lines it fits in, so a layout with one more break is only tried when
            # one fewer does not fit (a longer cue whose first n+1 lines fit in n would fit in fewer lines too).
            by_breaks = [NO_LAYOUT] * r.lines
            for breaks in range(r.lines):
                by_breaks[breaks] = self.best_layout(layouts, first, end, breaks)
                if by_breaks[breaks].cost < math.inf:
                    break
            else:
                return  # nor will any longer run fit
            layouts[end] = by_breaks
            starts, start = [], end
            for k in range(breaks, -1, -1):  # back from the last line: where each line starts
                start = layouts[start][k].last_line
                starts.insert(0, start)
            sizes = [self.line(a, b) for a, b in zip(starts, starts[1:] + [end])]
            # The least weighted sum of squares unused widths of this total can have: the rest is unevenness.
            unused = sum(max(most - length, 0) / most for length, _, most in sizes)
            cost = by_breaks[breaks].cost - BALANCE * unused**2 / self.line_weights[len(sizes)]
            yield Candidate(first, end, tuple(starts),
                            cost + self.cue_cost(first, end, sum(length for length, _, _ in sizes)))

    def best_layout(self, layouts: dict[int, list[Layout]], first: int, end: int, breaks: int) -> Layout:
        """The best layout of words first..end-1 with `breaks` line breaks: the best of shorter runs
        with one break fewer, each followed by a last line."""
        r, cost, last_line = self.rules, math.inf, first
        widest = max(r.line_chars, r.cjk_line_chars)  # no line of more characters fits, in any script
        weight = BALANCE * (1 + TILT * breaks)  # of the last line's unevenness
        sentences_before_end = self.sentences[end - 1]
        for s in range(end - 1, first, -1) if breaks else (first,):  # s: where the last line starts
            above = layouts[s][breaks - 1].cost + self.break_cost[s - 1] if breaks else 0.0
            if above == math.inf:
                continue
            length, cjk, most = self.line(s, end)
            # Too long for any line, as is and with more words: more CJK characters than a CJK line
            # holds are more than half of what a line of another script holds.
            too_much_cjk = cjk > r.cjk_line_chars and 2 * cjk > r.line_chars
            if end - s > 1 and (length > widest or too_much_cjk):
                break
            if length > most and end - s > 1:  # a word longer than a line gets one of its own
                continue
            uneven = weight * (max(most - length, 0) / most) ** 2
            sentences = MID_LINE_SENTENCE * (sentences_before_end - self.sentences[s])
            if above + uneven + sentences < cost:  # on a tie the shorter last line: TILT decides
                cost, last_line = above + uneven + sentences, s
        return Layout(cost, last_line) if cost < math.inf else NO_LAYOUT

    def cue_cost(self, first: int, end: int, chars: int) -> float:
        """The cost of a cue of words first..end-1 beyond its lines: its end, reading speed,
        shortness, a lone word."""
        r = self.rules
        room = max(min(r.max_seconds, self.latest[end - 1] - self.starts[first]), FRAME_SECONDS)
        speed = min(max(chars / r.chars_per_second / room - 1, 0.0), 1.0)
        short = (r.min_seconds - room) / r.min_seconds if room < r.min_seconds else 0.0
        return (CUE + CUE_END * self.break_cost[end - 1] + SPEED * speed + SHORT * short
                + ORPHAN * (end - first == 1))

    def timed(self, chosen: list[Candidate]) -> list[Cue]:
        """The chosen cues, timed: at least min_seconds and long enough to read where the next cue
        allows, at most max_seconds, gap_seconds apart, one frame at least."""
        r, cues, last_end = self.rules, [], -math.inf
        for cue in chosen:
            first, end, starts = cue.first, cue.end, cue.line_starts
            lines = tuple("".join(w.text for w in self.words[a:b]).lstrip()
                          for a, b in zip(starts, starts[1:] + (end,)))
            start = max(self.starts[first], last_end + r.gap_seconds)
            limit = min(start + r.max_seconds, self.latest[end - 1])
            reading = sum(map(len, lines)) / r.chars_per_second
            wanted = max(self.ends[end - 1], start + r.min_seconds, start + reading)
            last_end = max(min(wanted, limit), start + FRAME_SECONDS)
            cues.append(Cue(start, last_end, lines, tuple(self.words[first:end])))
        return cues


def shape(segments: Sequence[Segment], rules: CueRules = CueRules()) -> list[Cue]:
    """The cues that show the segments' words, each exactly once and in order: the cheapest
    sequence of candidate cues, found by dynamic programming over the points between words."""
    words = _Words(segments, rules)
    n = len(words.words)
    plans = [Plan(0.0, None)] + [Plan(math.inf, None)] * n  # [j]: the best cues for the first j words
    for i in range(n):  # plans[i] is final here: every cue ending at i starts before it
        for cue in words.cues_from(i):
            if plans[i].cost + cue.cost < plans[cue.end].cost:
                plans[cue.end] = Plan(plans[i].cost + cue.cost, cue)
    chosen, j = [], n
    while cue := plans[j].last:  # back from the end, cue by cue
        chosen.append(cue)
        j = cue.first
    return words.timed(chosen[::-1])


def _width(line: str, rules: CueRules) -> int:
    return _most(len(line), len(_CJK.findall(line)), rules)


def _fits(first: Cue, second: Cue, rules: CueRules) -> bool:
    """Whether one cue could show the words of both: in lines filled greedily (the fewest there
    can be), within max_seconds, with no long pause between them."""
    lines, line = 0, ""
    for w in first.words + second.words:
        if line and len(line + w.text) <= _width(line + w.text, rules):
            line += w.text
        else:
            lines, line = lines + 1, w.text.lstrip()
    pause = second.words[0].start - first.words[-1].end
    return lines <= rules.lines and second.end - first.start <= rules.max_seconds and pause <= PAUSE_SECONDS


def violations(cues: Sequence[Cue], segments: Sequence[Segment], rules: CueRules = CueRules()) -> list[str]:
    """Every broken rule, one message each. Worked out from the cues alone, not the way shape
    chooses them: for tests and benchmarks to count."""
    found = []
    shown, spoken = [w.text for c in cues for w in c.words], [w.text for s in segments for w in words_of(s)]
    if shown != spoken:
        k = next((k for k, (a, b) in enumerate(zip(shown, spoken)) if a != b), min(len(shown), len(spoken)))
        found.append(f"word {k + 1}: the cues show {shown[k:k + 1]} where the transcript has {spoken[k:k + 1]}")
    for k, cue in enumerate(cues):
        name, after, lines = f"cue {k + 1}", cues[k + 1] if k + 1 < len(cues) else None, cue.lines
        said = "".join(w.text for w in cue.words)
        if "".join("".join(lines).split()) != "".join(said.split()):
            found.append(f"{name}: its lines {lines!r} are not its words {said!r}")
        if len(lines) > rules.lines:
            found.append(f"{name}: {len(lines)} lines (max {rules.lines})")
        lone = {w.text.strip() for w in cue.words}  # a line of one word may be as long as the word
        found += [f"{name}: line {n} has {len(line)} characters (max {_width(line, rules)})"
                  for n, line in enumerate(lines, 1) if len(line) > _width(line, rules) and line not in lone]
        seconds, chars = cue.end - cue.start, sum(map(len, lines))
        if seconds > rules.max_seconds + TOLERANCE:
            found.append(f"{name}: lasts {seconds:.3f} s (max {rules.max_seconds})")
        if seconds < rules.min_seconds - TOLERANCE and (
                not after or after.start > cue.start + rules.min_seconds + rules.gap_seconds):
            found.append(f"{name}: lasts {seconds:.3f} s (min {rules.min_seconds:.3f}) though the next cue leaves room")
        room = min(after.start - rules.gap_seconds if after else math.inf, cue.start + rules.max_seconds)
        if chars > rules.chars_per_second * (seconds + TOLERANCE) and cue.end < room - TOLERANCE:
            found.append(f"{name}: {chars} characters in {seconds:.3f} s, though it could last until {room:.3f}")
        if seconds <= 0:
            found.append(f"{name}: ends at {cue.end:.3f}, not after its start {cue.start:.3f}")
        if after and after.start < cue.start:
            found.append(f"cue {k + 2}: starts at {after.start:.3f}, before {name} ({cue.start:.3f})")
        elif after and after.start < cue.end - TOLERANCE:
            found.append(f"cue {k + 2}: starts at {after.start:.3f}, overlapping {name} (until {cue.end:.3f})")
        elif after and after.start - cue.end < rules.gap_seconds - TOLERANCE:
            found.append(f"cue {k + 2}: starts {after.start - cue.end:.3f} s after {name} "
                         f"(gap {rules.gap_seconds:.3f})")
        pairs = ((k, cues[k - 1] if k else None, cue), (k + 2, cue, after)) if len(cue.words) == 1 else ()
        found += [f"{name}: its one word {cue.words[0].text!r} fits in cue {other}"
                  for other, first, second in pairs if first and second and _fits(first, second, rules)]
    return found
