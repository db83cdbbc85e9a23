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
        words.append(Word(start, segment.start + span * done / total, lead + core))
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
        texts = [w.text for w in self.words]  # prefix sums of characters, CJK ones, sentence ends:
        self.chars = [0, *accumulate(map(len, texts))]
        self.cjk = [0, *accumulate(len(_CJK.findall(t)) for t in texts)]
        self.sentences = [0, *accumulate(bool(SENTENCE_END.search(t.strip())) for t in texts)]
        self.lead = [len(t) - len(t.lstrip()) for t in texts]
        after = [t.strip().lower() for t in texts[1:]] + [""]
        self.breaks = [_break_cost(t, a, k in segment_ends) for k, (t, a) in enumerate(zip(texts, after))]

    def line(self, s: int, e: int) -> tuple[int, int, int]:
        """Characters of a line of words s..e-1, how many of them are CJK, and the most it may have."""
        length = self.chars[e] - self.chars[s] - self.lead[s]
        cjk = self.cjk[e] - self.cjk[s]
        return length, cjk, _most(length, cjk, self.rules)

    def cues_from(self, i: int) -> Iterator[tuple[int, tuple[int, ...], float]]:
        """(end, line starts, cost) of every cue of words i..end-1 within the hard limits, in the
        fewest lines it fits in (Netflix: one line if it fits), laid out as well as it can be."""
        r = self.rules
        table: list[list[tuple[float, int]]] = []  # [e-i-1][m]: words i..e-1 in m+1 lines (cost, last line's start)
        for e in range(i + 1, len(self.words) + 1):
            if e - i > 1 and (min(self.ends[e - 1], self.latest[e - 1]) - self.starts[i] > r.max_seconds
                              or self.starts[e - 1] - self.ends[e - 2] > PAUSE_SECONDS):
                return
            row: list[tuple[float, int]] = []
            # A cue takes the fewest lines it fits in, so m+1 lines are only tried when m are too few
            # (a longer cue whose first m+1 lines fit in m would fit in fewer lines too).
            for m in range(r.lines):
                row.append((math.inf, i) if m and row[-1][0] < math.inf else self.last_line(table, i, e, m))
            table.append(row)
            m = next((m for m, (cost, _) in enumerate(row) if cost < math.inf), None)
            if m is None:
                return  # nor will any longer run fit
            starts, cost, s = [], row[m][0], e
            for k in range(m, -1, -1):
                s = table[s - i - 1][k][1]
                starts.insert(0, s)
            sizes = [self.line(a, b) for a, b in zip(starts, starts[1:] + [e])]
            # The least weighted sum of squares unused widths of this total can have: the rest is unevenness.
            unused = sum(max(most - length, 0) / most for length, _, most in sizes)
            cost -= BALANCE * unused**2 / sum(1 / (1 + TILT * k) for k in range(len(sizes)))
            yield e, tuple(starts), cost + self.cue_cost(i, e, sum(length for length, _, _ in sizes))

    def last_line(self, table: list[list[tuple[float, int]]], i: int, e: int, m: int) -> tuple[float, int]:
        """The best layout of words i..e-1 in m+1 lines, from those of shorter runs in m lines:
        its cost and its last line's start."""
        r, best = self.rules, (math.inf, i)
        for s in range(e - 1, i, -1) if m else (i,):
            above = table[s - i - 1][m - 1][0] + self.breaks[s - 1] if m else 0.0
            if above == math.inf:
                continue
            length, cjk, most = self.line(s, e)
            # Too long for any line, as is and with more words: more CJK characters than a CJK line
            # holds are more than half of what a line of another script holds.
            too_much_cjk = cjk > r.cjk_line_chars and 2 * cjk > r.line_chars
            if e - s > 1 and (length > max(r.line_chars, r.cjk_line_chars) or too_much_cjk):
                break
            if length > most and e - s > 1:  # a word longer than a line gets one of its own
                continue
            uneven = BALANCE * (1 + TILT * m) * (max(most - length, 0) / most) ** 2
            sentences = MID_LINE_SENTENCE * (self.sentences[e - 1] - self.sentences[s])
            if above + uneven + sentences < best[0]:  # on a tie the shorter last line: TILT decides
                best = (above + uneven + sentences, s)
        return best

    def cue_cost(self, i: int, j: int, chars: int) -> float:
        """The cost of a cue of words i..j-1 beyond its lines: its end, reading speed, shortness, a lone word."""
        r = self.rules
        room = max(min(r.max_seconds, self.latest[j - 1] - self.starts[i]), FRAME_SECONDS)
        speed = min(max(chars / r.chars_per_second / room - 1, 0.0), 1.0)
        short = (r.min_seconds - room) / r.min_seconds if room < r.min_seconds else 0.0
        return CUE + CUE_END * self.breaks[j - 1] + SPEED * speed + SHORT * short + ORPHAN * (j - i == 1)

    def timed(self, spans: list[tuple[int, int, tuple[int, ...]]]) -> list[Cue]:
        """The cues of these runs of words, timed: at least min_seconds and long enough to read
        where the next cue allows, at most max_seconds, gap_seconds apart, one frame at least."""
        r, cues, last_end = self.rules, [], -math.inf
        for i, j, starts in spans:
            lines = tuple("".join(w.text for w in self.words[a:b]).lstrip()
                          for a, b in zip(starts, starts[1:] + (j,)))
            start = max(self.starts[i], last_end + r.gap_seconds)
            limit = min(start + r.max_seconds, self.latest[j - 1])
            reading = sum(map(len, lines)) / r.chars_per_second
            wanted = max(self.ends[j - 1], start + r.min_seconds, start + reading)
            last_end = max(min(wanted, limit), start + FRAME_SECONDS)
            cues.append(Cue(start, last_end, lines, tuple(self.words[i:j])))
        return cues


def shape(segments: Sequence[Segment], rules: CueRules = CueRules()) -> list[Cue]:
    """The cues that show the segments' words, each exactly once and in order: the cheapest
    sequence of candidate cues, found by dynamic programming over the points between words."""
    words = _Words(segments, rules)
    n = len(words.words)
    best = [0.0] + [math.inf] * n  # the least cost of cues showing the first j words
    back: list[tuple[int, tuple[int, ...]]] = [(0, ())] * (n + 1)
    for i in range(n):  # best[i] is final here: every cue ending at i starts before it
        for j, starts, cost in words.cues_from(i):
            if best[i] + cost < best[j]:
                best[j], back[j] = best[i] + cost, (i, starts)
    spans, j = [], n
    while j:
        i, starts = back[j]
        spans.append((i, j, starts))
        j = i
    return words.timed(spans[::-1])


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
