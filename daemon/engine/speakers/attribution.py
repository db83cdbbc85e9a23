"""Who said each word: the speaker of the voice prints around it, by time.

Each 10 ms frame of speech takes the speaker of the print whose window is centred nearest to
it; a word goes to the speaker of most of its frames (or of the nearest labelled frame, for a
word VAD did not hear as speech). A segment whose words two people said is split where the
speaker changes, so every segment, and every cue made from it, has one speaker.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from daemon.engine.speakers import clustering
from daemon.engine.speakers.voices import FRAMES_PER_SECOND
from daemon.transcript import Segment, Turn, Voice, Word


def label(index: int) -> str:
    return f"Speaker {index + 1}"


def frame_speakers(voices: list[Voice], speakers: np.ndarray) -> np.ndarray:
    """The speaker number of each 10 ms frame from the start of the recording; -1 where no print is."""
    if not voices:
        return np.full(0, -1, int)
    frames = np.full(round(voices[-1].end * FRAMES_PER_SECOND) + 1, -1, int)
    centres = [(v.start + v.end) / 2 for v in voices]
    for i, v in enumerate(voices):
        lo = v.start if i == 0 else max(v.start, (centres[i - 1] + centres[i]) / 2)
        hi = v.end if i == len(voices) - 1 else min(v.end, (centres[i] + centres[i + 1]) / 2)
        frames[round(lo * FRAMES_PER_SECOND):round(hi * FRAMES_PER_SECOND)] = speakers[i]
    return frames


def attribute(segments: tuple[Segment, ...], frames: np.ndarray) -> tuple[Segment, ...]:
    """`segments` with a speaker on each word and segment, split where the speaker changes."""
    labelled = np.flatnonzero(frames >= 0)
    if len(labelled) == 0:
        return segments
    out: list[Segment] = []
    for seg in segments:
        if not seg.words:
            out.append(replace(seg, speaker=label(_speaker(frames, labelled, seg.start, seg.end))))
            continue
        words = [replace(w, speaker=label(_speaker(frames, labelled, w.start, w.end))) for w in seg.words]
        out += _split(seg, words)
    return tuple(out)


def _speaker(frames: np.ndarray, labelled: np.ndarray, start: float, end: float) -> int:
    lo, hi = round(start * FRAMES_PER_SECOND), max(round(end * FRAMES_PER_SECOND), round(start * FRAMES_PER_SECOND) + 1)
    inside = frames[lo:hi]
    inside = inside[inside >= 0]
    if len(inside):
        return int(np.bincount(inside).argmax())
    middle = (lo + hi) / 2
    nearest = labelled[np.clip(np.searchsorted(labelled, middle) - np.array([1, 0]), 0, len(labelled) - 1)]
    return int(frames[nearest[np.argmin(np.abs(nearest - middle))]])


def _split(seg: Segment, words: list[Word]) -> list[Segment]:
    runs: list[list[Word]] = [[words[0]]]
    for w in words[1:]:
        if w.speaker == runs[-1][-1].speaker:
            runs[-1].append(w)
        else:
            runs.append([w])
    if len(runs) == 1:
        return [replace(seg, words=tuple(words), speaker=words[0].speaker)]
    parts = []
    for i, run in enumerate(runs):
        start = seg.start if i == 0 else run[0].start
        end = seg.end if i == len(runs) - 1 else run[-1].end
        parts.append(Segment(start, max(end, start), "".join(w.text for w in run).strip(),
                             tokens=seg.tokens if i == 0 else (), words=tuple(run), speaker=run[0].speaker))
    return parts


def labelled(segments: tuple[Segment, ...], voices: list[Voice],
             bounds: tuple[int, int]) -> tuple[tuple[Segment, ...], tuple[Turn, ...]]:
    """`segments` with speakers and the speakers' turns, when the prints hold more than one voice;
    the segments as they are and no turns otherwise (a voice memo must not become "Speaker 1")."""
    speakers = clustering.cluster(voices, bounds)
    if len(set(speakers.tolist())) < 2:
        return segments, ()
    frames = frame_speakers(voices, speakers)
    return attribute(segments, frames), turns(frames)


def turns(frames: np.ndarray) -> tuple[Turn, ...]:
    """Each run of frames of one speaker, as the speech detection bounds it (tighter than word times)."""
    edges = np.flatnonzero(np.diff(frames)) + 1
    found = []
    for a, b in zip([0, *edges.tolist()], [*edges.tolist(), len(frames)]):
        if frames[a] >= 0:
            found.append(Turn(a / FRAMES_PER_SECOND, b / FRAMES_PER_SECOND, label(int(frames[a]))))
    return tuple(found)
