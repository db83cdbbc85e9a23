"""Voice prints of a recording: CAM++ embeddings of short windows over the speech Silero VAD finds.

Two streaming passes over the file, so memory does not grow with its length: the first scores
speech (one byte per 10 ms frame is kept: 0.4 MB an hour), the second cuts the planned windows
out of the audio as it streams by and embeds them. Windows sit at fixed places of the speech, so
the same file always gives the same prints, whether or not the job was stopped on the way.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from threading import Event

import numpy as np
import torch
from whisper.audio import HOP_LENGTH

from daemon.engine import chunking, vad
from daemon.engine.audio import SAMPLE_RATE, stream_audio
from daemon.engine.speakers import campplus
from daemon.engine.speakers.fbank import fbank
from daemon.transcript import Voice

FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH
# 1.5 s windows: CAM++ tells voices apart well from about a second of speech, and longer windows
# would straddle more changes of speaker. Side by side, not overlapping: half-overlapping ones cost
# twice the time and labelled the development set no better (bench/speakers.py).
WINDOW_FRAMES = round(1.5 * FRAMES_PER_SECOND)
HOP_FRAMES = WINDOW_FRAMES
MIN_FRAMES = round(0.5 * FRAMES_PER_SECOND)  # shorter bursts print poorly: their words take their neighbours' labels
PIECE_SAMPLES = 30 * SAMPLE_RATE
BATCH = 32  # windows embedded together: batching is 2-3x faster than one by one, and memory stays small


class Stopped(Exception):
    """Asked to stop between two pieces of audio: the prints are made again next time."""


def plan(speech: np.ndarray) -> list[tuple[int, int]]:
    """(first, end) frames of each window: WINDOW_FRAMES every HOP_FRAMES along each stretch of
    speech, the last one ending with it; a stretch shorter than a window is one window of its own."""
    windows = []
    for start, end in vad.runs(speech):
        if end - start < MIN_FRAMES:
            continue
        if end - start <= WINDOW_FRAMES:
            windows.append((start, end))
            continue
        starts = list(range(start, end - WINDOW_FRAMES + 1, HOP_FRAMES))
        if starts[-1] + WINDOW_FRAMES < end:
            starts.append(end - WINDOW_FRAMES)
        windows += [(s, s + WINDOW_FRAMES) for s in starts]
    return windows


class VoicePrinter:
    """CAM++ and Silero VAD, loaded once per worker (about 30 MB together)."""

    def __init__(self, detector: vad.SpeechDetector | None = None) -> None:
        self.model = campplus.load()
        self.detector = detector or vad.SpeechDetector()
        self.stop = Event()

    def voices(self, path: Path, threshold: float = 0.5, stop: Event | None = None) -> list[Voice]:
        """The voice prints of `path`, in time order; Stopped once `stop` is set."""
        self.stop = stop or Event()
        windows = plan(vad.voiced(self._probabilities(path), threshold))
        return list(self._embed(path, windows))

    def _pieces(self, path: Path) -> Iterator[np.ndarray]:
        for piece in stream_audio(path, PIECE_SAMPLES):
            if self.stop.is_set():
                raise Stopped
            yield piece

    def _probabilities(self, path: Path) -> np.ndarray:
        probs, before = [], np.empty(0, np.float32)
        for piece in self._pieces(path):
            probs.append(np.zeros(len(piece) // HOP_LENGTH, np.float32) if chunking.is_silent(piece)
                         else self.detector.probabilities(piece, before))
            before = piece[-vad.WARMUP_SAMPLES:]
        return np.concatenate(probs) if probs else np.empty(0, np.float32)

    def _embed(self, path: Path, windows: list[tuple[int, int]]) -> Iterator[Voice]:
        """Cut each window out of the audio as it streams by, keeping only what the next ones need."""
        buffer, at = np.empty(0, np.float32), 0  # the audio held, and the sample it starts at
        pending = iter(windows)
        ready: list[tuple[int, int]] = []
        window = next(pending, None)
        for piece in self._pieces(path):
            buffer = np.concatenate([buffer, piece])
            while window is not None and window[1] * HOP_LENGTH <= at + len(buffer):
                ready.append(window)
                window = next(pending, None)
            yield from self._prints(buffer, at, ready)
            ready = []
            keep_from = window[0] * HOP_LENGTH - at if window is not None else len(buffer)
            buffer, at = buffer[keep_from:], at + keep_from
        # The file may end a frame short of what its speech probabilities counted.
        yield from self._prints(buffer, at, [w for w in [window, *pending] if w is not None])

    def _prints(self, buffer: np.ndarray, at: int, windows: list[tuple[int, int]]) -> Iterator[Voice]:
        features = [fbank(torch.from_numpy(buffer[s * HOP_LENGTH - at:e * HOP_LENGTH - at].copy()))
                    for s, e in windows]
        vectors: list[np.ndarray] = [np.empty(0)] * len(windows)
        by_length: dict[int, list[int]] = {}
        for i, f in enumerate(features):  # windows of one length go through the network together
            by_length.setdefault(len(f), []).append(i)
        with torch.inference_mode():
            for same in by_length.values():
                for b in range(0, len(same), BATCH):
                    batch = same[b:b + BATCH]
                    out = self.model(torch.stack([features[i] for i in batch])).numpy()
                    for i, v in zip(batch, out):
                        vectors[i] = v
        for (s, e), v in zip(windows, vectors):
            yield Voice(s / FRAMES_PER_SECOND, e / FRAMES_PER_SECOND, v.astype("<f4").tobytes())
