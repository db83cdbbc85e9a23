"""Word timestamps: when each word of a window was said.

openai-whisper's method (its timing.py): the cross-attention of a few "alignment heads" follows
the audio as the text goes on; normalised and median-filtered, their mean is a cost matrix of
text tokens against 20 ms audio positions, and dynamic time warping finds the monotonic path
through it; a word starts where the path reaches its first token. Here it runs on the window's
audio as already encoded for decoding: one decoder pass over the decoded tokens, no second
encoder pass. The rules that follow the alignment (punctuation joins its word, long words at
sentence and segment edges are cut, a segment spans its words) are whisper's, so that the times
match what `whisper --word_timestamps True` gives on the same audio and weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from whisper.audio import TOKENS_PER_SECOND
from whisper.timing import WordTiming, median_filter, merge_punctuations

from daemon.engine.decoder import Decoder

MEDIAN_FILTER_WIDTH = 7  # audio positions (140 ms): whisper's default
PREPENDED = "\"'“¿([{-"  # punctuation that joins the word after it (whisper's defaults)
APPENDED = "\"'.。,，!！?？:：”)]}、"  # … and the word before it
SENTENCE_END = ".。!！?？"
LONGEST_TYPICAL_WORD = 0.7  # seconds: the median word duration counts as at most this
PAUSE_MEDIANS = 4  # a first word this many median durations after the last speech follows a pause
SEGMENT_SLACK = 0.5  # seconds a word may overhang its segment's own timestamp before the timestamp wins


def alignment_heads(model: torch.nn.Module) -> list[tuple[int, int]]:
    """(layer, head) pairs whose cross-attention follows the audio, in whisper's order."""
    heads = model.alignment_heads  # type: ignore[union-attr]
    heads = heads.to_dense() if heads.is_sparse else heads
    return [(int(layer), int(head)) for layer, head in heads.nonzero()]


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest monotonic path from cost[0, 0] to cost[-1, -1], as (rows, columns).

    whisper's dtw_cpu, with its tie-breaking, computed one anti-diagonal at a time with numpy:
    every cell of a diagonal depends only on the two before it. whisper's numba version compiles
    for 1.4 s on the first call of each process, which a one-file run would pay in full.
    """
    rows, columns = cost.shape
    total = np.full((rows + 1, columns + 1), np.inf, dtype=np.float32)
    trace = np.zeros((rows + 1, columns + 1), dtype=np.int8)
    total[0, 0] = 0
    for diagonal in range(2, rows + columns + 1):
        i = np.arange(max(1, diagonal - columns), min(rows, diagonal - 1) + 1)
        j = diagonal - i
        c0, c1, c2 = total[i - 1, j - 1], total[i - 1, j], total[i, j - 1]
        step = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2))
        total[i, j] = cost[i - 1, j - 1] + np.choose(step, [c0, c1, c2])
        trace[i, j] = step
    trace[0, :], trace[:, 0] = 2, 1
    i, j, path = rows, columns, []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        step = trace[i, j]
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    return np.array(path[::-1]).T if path else (np.empty(0, int), np.empty(0, int))


def find_alignment(decoder: Decoder, audio: Tensor, text: list[int], frames: int) -> list[WordTiming]:
    """The words of `text` (text tokens, no timestamps) with their times in the window, from the
    attention of `audio` (one encoded window with `frames` mel frames of content)."""
    t = decoder.tokenizer
    if not text:
        return []
    sot = list(t.sot_sequence)
    tokens = [*sot, t.no_timestamps, *text, t.eot]
    attention, logits = decoder.attention(audio, tokens, alignment_heads(decoder.model))
    probs = logits[len(sot):len(sot) + len(text), :t.eot].softmax(-1)
    token_probs = probs[torch.arange(len(text)), torch.tensor(text)].tolist()

    weights = attention[:, :, :frames // 2].softmax(-1)  # two mel frames per audio position
    std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
    # One head at a time: whisper's filter sorts a window of 7 per value, with indices (84 bytes a
    # value), which for base's 24 heads over a full window was 180 MB at once, the daemon's peak.
    weights = torch.stack([median_filter(head, MEDIAN_FILTER_WIDTH) for head in (weights - mean) / std])
    matrix = weights.mean(0)[len(sot):-1]  # the no_timestamps token, then the text tokens
    text_indices, time_indices = dtw(-matrix.double().numpy())

    words, word_tokens = t.split_to_word_tokens(text + [t.eot])
    if len(word_tokens) <= 1:
        return []
    boundaries = np.pad(np.cumsum([len(w) for w in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] / TOKENS_PER_SECOND
    return [WordTiming(word, tokens, float(jump_times[a]), float(jump_times[b]), float(np.mean(token_probs[a:b])))
            for word, tokens, a, b in zip(words, word_tokens, boundaries[:-1], boundaries[1:])]


def word_times(decoder: Decoder, audio: Tensor, pieces: Sequence[Sequence[int]], frames: int,
               spans: Sequence[tuple[float, float]], onset: float = 0.0) -> list[tuple[list[WordTiming], float, float]]:
    """Each segment's words, and its span fitted to them, all in seconds from the window's start.

    `pieces`: each segment's text tokens; `spans`: each segment's (start, end) from its timestamp
    tokens; `onset`: where speech begins in the window, when a speech detector knows it. The path
    through the attention starts at the window's first position, so the first word always starts
    there: it starts at the onset instead, when that falls inside it. Then fitted as whisper fits
    them: a too-long first word after a pause, or a too-long word at a sentence's edge, is cut to
    twice the median word; a segment spans its words unless a word overhangs the segment's own
    timestamp by more than SEGMENT_SLACK."""
    words = find_alignment(decoder, audio, [t for piece in pieces for t in piece], frames)
    if words and words[0].start < onset < words[0].end:
        words[0].start = onset
    durations = np.array([w.end - w.start for w in words])
    durations = durations[durations.nonzero()]
    median = min(LONGEST_TYPICAL_WORD, float(np.median(durations))) if len(durations) else 0.0
    longest = 2 * median
    if len(durations):
        for before, word in zip(words, words[1:]):
            if word.end - word.start > longest:
                if word.word in SENTENCE_END:
                    word.end = word.start + longest
                elif before.word in SENTENCE_END:
                    word.start = word.end - longest
    merge_punctuations(words, PREPENDED, APPENDED)  # a mark's word becomes "", its tokens move

    fitted = []
    last_speech = 0.0  # the window starts where speech does (vad.py), or at the end of the last segment
    at = 0
    for piece, (start, end) in zip(pieces, spans):
        own: list[WordTiming] = []
        count = 0
        while at < len(words) and count < len(piece):
            if words[at].word:
                own.append(words[at])
            count += len(words[at].tokens)
            at += 1
        if own:
            first, last = own[0], own[-1]
            after_pause = first.end - last_speech > PAUSE_MEDIANS * median
            if after_pause and (first.end - first.start > longest
                                or (len(own) > 1 and own[1].end - first.start > 2 * longest)):
                if len(own) > 1 and own[1].end - own[1].start > longest:
                    first.end = own[1].start = max(own[1].end / 2, own[1].end - longest)
                first.start = max(0.0, first.end - longest)
            if start < first.end and start - SEGMENT_SLACK > first.start:
                first.start = max(0.0, min(first.end - median, start))
            else:
                start = first.start
            if end > last.start and end + SEGMENT_SLACK < last.end:
                last.end = max(last.start + median, end)
            else:
                end = last.end
            last_speech = end
        fitted.append((own, start, end))
    return fitted
