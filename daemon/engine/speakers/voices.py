"""Voice prints of a recording: CAM++ embeddings of short windows over the speech Silero VAD finds.

Two streaming passes over the file, so memory does not grow with its length: the first scores
speech (one float per 10 ms frame is kept: 1.4 MB an hour), the second cuts the planned windows
out of the audio as it streams by and embeds them. The first pass is mostly skipped: the
transcription has scored the speech already (Window.speech), and only what an earlier run of a
resumed job scored is scored again, in the same pieces, so it comes out the same. Windows sit at
fixed places of the speech, so the same file always gives the same prints, whether or not the job
was stopped on the way.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from threading import Event

import numpy as np
import torch
from whisper.audio import HOP_LENGTH

from daemon.engine import vad
from daemon.engine.audio import SAMPLE_RATE, stream_audio
from daemon.engine.speakers import campplus
from daemon.engine.speakers.fbank import fbank
from daemon.transcript import Voice

FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH
# 1.5 s windows: CAM++ tells voices apart well from about a second of speech, and longer windows
# would straddle more changes of speaker. About one per SPACING_FRAMES of a stretch of speech, evenly
# spread: people mostly change at a pause, which ends a stretch, and a print costs ~25 ms of CPU, so
# windows side by side (or half-overlapping, the usual choice) cost 3 (6) times as much for the same
# labels on the development set (bench/speakers.py).
WINDOW_FRAMES = round(1.5 * FRAMES_PER_SECOND)
SPACING_FRAMES = 2 * WINDOW_FRAMES
MIN_FRAMES = round(0.5 * FRAMES_PER_SECOND)  # shorter bursts print poorly: their words take their neighbours' labels
PIECE_SAMPLES = 30 * SAMPLE_RATE  # the engine's pieces at the default chunk_seconds
BATCH = 32  # windows embedded together: 1.5x as fast as one by one, and 32 windows' features are 1.5 MB


class Stopped(Exception):
    """Asked to stop between two pieces of audio: the prints are made again next time."""


Span = tuple[int, int]  # (first, end) 10 ms frames
Heard = tuple[int, np.ndarray]  # speech probabilities of the 10 ms frames from the first one given on


def plan(speech: np.ndarray) -> list[tuple[Span, Span]]:
    """Each stretch of speech cut in shares of about SPACING_FRAMES (one share, if shorter), and the
    window each is printed from: WINDOW_FRAMES in its middle, or all of a share shorter than that.
    A print stands for its whole share, so every frame of speech gets a speaker."""
    planned = []
    for start, end in vad.runs(speech):
        if end - start < MIN_FRAMES:
            continue
        count = max(1, round((end - start) / SPACING_FRAMES))
        bounds = [start + round(k * (end - start) / count) for k in range(count + 1)]
        for first, last in zip(bounds, bounds[1:]):
            length = min(WINDOW_FRAMES, last - first)
            middle = first + (last - first - length) // 2
            planned.append(((first, last), (middle, middle + length)))
    return planned


class VoicePrinter:
    """CAM++, loaded once per process when first needed and shared by its workers (about 30 MB with
    Silero VAD, which only a resumed job or one transcribed without VAD needs)."""

    def __init__(self, piece_samples: int = PIECE_SAMPLES) -> None:
        self._model: campplus.CAMPPlus | None = None  # loaded with the first recording that needs two prints
        self.piece_samples = piece_samples  # the pieces the transcription scored speech in
        self._detector: vad.SpeechDetector | None = None  # only for what the transcription did not score
        self.stop = Event()

    def voices(self, path: Path, threshold: float = 0.5, stop: Event | None = None,
               heard: Heard | None = None) -> list[Voice]:
        """The voice prints of `path`, in time order; Stopped once `stop` is set. `heard`: the speech
        probabilities the transcription computed, from the frame it started at to the end."""
        self.stop = stop or Event()
        planned = plan(vad.voiced(self._probabilities(path, heard), threshold))
        if len(planned) < 2:  # one print tells no voices apart: a short memo costs no network
            return []
        return list(self._embed(path, planned))

    @property
    def model(self) -> campplus.CAMPPlus:
        if self._model is None:
            self._model = campplus.shared()
        return self._model

    def _pieces(self, path: Path, piece_samples: int = PIECE_SAMPLES) -> Iterator[np.ndarray]:
        for piece in stream_audio(path, piece_samples):
            if self.stop.is_set():
                raise Stopped
            yield piece

    def _probabilities(self, path: Path, heard: Heard | None) -> np.ndarray:
        """Speech probabilities of every frame; those before the `heard` ones scored as the engine's
        Feed scores them, piece by piece from the file's start."""
        first, known = heard if heard is not None else (None, np.empty(0, np.float32))
        probs, before, frames = [known[:0]], np.empty(0, np.float32), 0
        pieces = self._pieces(path, self.piece_samples) if first != 0 else iter(())
        for piece in pieces:
            probs.append(self._detect().probabilities(piece, before))
            before, frames = piece[-vad.WARMUP_SAMPLES:], frames + len(probs[-1])
            if first is not None and frames >= first:
                break
        scored = np.concatenate(probs)
        return scored if first is None else np.concatenate([scored[:first], known])

    def _detect(self) -> vad.SpeechDetector:
        if self._detector is None:
            self._detector = vad.SpeechDetector()
        return self._detector

    def _embed(self, path: Path, planned: list[tuple[Span, Span]]) -> Iterator[Voice]:
        """Cut each window out of the audio as it streams by, keeping only what the next ones need,
        and embed them BATCH at a time."""
        buffer, at = np.empty(0, np.float32), 0  # the audio held, and the sample it starts at
        pending = iter(planned)
        ready: list[tuple[Span, torch.Tensor]] = []  # shares whose windows are cut out, with their features
        share, window = next(pending, (None, None))
        for piece in self._pieces(path):
            buffer = np.concatenate([buffer, piece])
            while share is not None and window is not None and window[1] * HOP_LENGTH <= at + len(buffer):
                ready.append((share, self._features(buffer, at, window)))
                share, window = next(pending, (None, None))
            if len(ready) >= BATCH:
                yield from self._prints(ready)
                ready = []
            keep_from = window[0] * HOP_LENGTH - at if window is not None else len(buffer)
            buffer, at = buffer[keep_from:], at + keep_from
        # The file may end a frame short of what its speech probabilities counted.
        rest = [(share, window), *pending] if share is not None and window is not None else []
        yield from self._prints(ready + [(s, self._features(buffer, at, w)) for s, w in rest])

    @staticmethod
    def _features(buffer: np.ndarray, at: int, window: Span) -> torch.Tensor:
        """A shorter stretch of speech is repeated to a whole window (the usual padding of speaker
        verification): the network then takes every window in one batch, 1.5x as fast as alone."""
        first, end = window
        audio = buffer[first * HOP_LENGTH - at:end * HOP_LENGTH - at]
        return fbank(torch.from_numpy(np.resize(audio, WINDOW_FRAMES * HOP_LENGTH) if len(audio) else audio.copy()))

    def _prints(self, ready: list[tuple[Span, torch.Tensor]]) -> Iterator[Voice]:
        """The prints of the windows cut out, each with the share of speech it stands for."""
        for b in range(0, len(ready), BATCH):
            batch = ready[b:b + BATCH]
            with torch.inference_mode():
                vectors = self.model(torch.stack([features for _, features in batch])).numpy()
            for ((first, end), _), v in zip(batch, vectors):
                yield Voice(first / FRAMES_PER_SECOND, end / FRAMES_PER_SECOND, v.astype("<f4").tobytes())
