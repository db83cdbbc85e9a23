"""The read-ahead audio buffer the seek loop (transcribe.py) decodes from, and what VAD says of it.

A file's audio from a resume offset on is read piece by piece into a buffer that the engine
consumes from the front. With a speech detector, each piece's speech probabilities are computed as
it is read (pieces sit at fixed positions of the file, so a resumed run gets the same ones) and
kept beside the audio, one per 10 ms frame. Positions in the buffer are counted in those frames
from its start, which is where the last window ended.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from whisper.audio import HOP_LENGTH

from daemon.engine import chunking, vad
from daemon.engine.audio import SAMPLE_RATE, stream_audio


class Feed:
    """The audio of a file from `skip_samples` on, with its speech probabilities when `detector`
    is given (None: no VAD; `threshold` is then unused)."""

    def __init__(self, path: Path, piece_samples: int, skip_samples: int,
                 detector: vad.SpeechDetector | None, threshold: float) -> None:
        self.pieces = stream_audio(path, piece_samples)
        self.skip = skip_samples
        self.detector = detector
        self.threshold = threshold  # speech probability above which a frame is speech
        self.decoded = 0  # samples decoded from the start of the file, skipped ones included
        self.exhausted = False
        self.audio = np.empty(0, np.float32)
        self.probs = np.empty(0, np.float32)  # speech probability per 10 ms frame of `audio`
        self._before = np.empty(0, np.float32)  # the end of the last piece: warms the detector up

    @property
    def seconds(self) -> float:
        return self.decoded / SAMPLE_RATE

    def fill(self, target: int) -> None:
        """Top the buffer up to `target` samples, or with all that is left."""
        while not self.exhausted and len(self.audio) < target:
            piece = next(self.pieces, None)
            if piece is None:
                self.exhausted = True
                break
            self.decoded += len(piece)
            if self.decoded <= self.skip:  # resuming: earlier runs finished this piece
                self._before = piece[-vad.WARMUP_SAMPLES:]
                continue
            kept = max(0, len(piece) - (self.decoded - self.skip))  # a whole number of 10 ms frames
            self.audio = np.concatenate([self.audio, piece[kept:]])
            if self.detector is not None:
                probs = self.detector.probabilities(piece, self._before)
                self.probs = np.concatenate([self.probs, probs[kept // HOP_LENGTH:]])
            self._before = piece[-vad.WARMUP_SAMPLES:]

    def drop(self, samples: int) -> None:
        """Consume `samples` (a whole number of 10 ms frames) from the front of the buffer."""
        self.audio = self.audio[samples:]
        self.probs = self.probs[samples // HOP_LENGTH:]

    def speech(self) -> np.ndarray | None:
        """Which 10 ms frames of the buffer are speech or near it; None without VAD. Judged over the
        whole buffer from its start, which is where the last window ended: a resumed run starts at
        one of those places and judges the same frames the same way."""
        return vad.speech(self.probs, self.threshold) if self.detector is not None else None

    def voiced(self, keep: np.ndarray | None, start: int, end: int) -> tuple[int, int]:
        """The frames of [start, end) worth decoding, from the first one of speech to the last;
        (end, end) when there are none. `keep`: `speech()`. Without VAD: all of them unless they
        are silent."""
        if keep is None:
            return (end, end) if chunking.is_silent(self.audio[start * HOP_LENGTH:end * HOP_LENGTH]) else (start, end)
        speech = np.flatnonzero(keep[start:end])
        return (start + int(speech[0]), start + int(speech[-1]) + 1) if len(speech) else (end, end)

    def muted(self, keep: np.ndarray | None, start: int, end: int) -> np.ndarray:
        """The audio of frames [start, end), long pauses between speech silenced: the model
        hears no noise or music to write words for, and the timestamps stay where they were."""
        audio = self.audio[start * HOP_LENGTH:end * HOP_LENGTH]
        return audio if keep is None else audio * np.repeat(keep[start:end], HOP_LENGTH)

    def onset(self, start: int, end: int) -> float:
        """Seconds from frame `start` to the first frame of [start, end) the detector heard speech
        in (0.0 without VAD): word timing starts the first word there (timing.word_times)."""
        if self.detector is None:
            return 0.0
        speech = np.flatnonzero(self.probs[start:end] >= self.threshold)
        return float(speech[0]) * HOP_LENGTH / SAMPLE_RATE if len(speech) else 0.0
