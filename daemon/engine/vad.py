"""Where people speak: Silero VAD's speech probabilities, and which 10 ms frames to give the model.

Whisper invents text over noise and music ("Thanks for watching!"), so the engine gives it only
the audio around speech: windows start where speech starts, end where it ends, and long pauses
inside are muted. Silero VAD ships its model in the `silero-vad` package and runs on our torch.

Everything here is a function of the audio at fixed positions of the file (pieces aligned to the
file's start), so a run resumed from a checkpoint sees the same speech as one that never stopped.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from whisper.audio import HOP_LENGTH

from daemon.engine import chunking
from daemon.engine.audio import SAMPLE_RATE

FRAME_SAMPLES = 512  # Silero's frame at 16 kHz (32 ms)
# A piece is scored as parallel streams of ~3 s, each started 1 s early so its recurrent state has
# settled: 3–4× faster than one stream, and 99.8% of frames agree with it on real speech.
STREAM_FRAMES = 96
WARMUP_FRAMES = 32
WARMUP_SAMPLES = WARMUP_FRAMES * FRAME_SAMPLES
HYSTERESIS = 0.15  # speech ends when the probability falls this far below the threshold (Silero's own rule)
MIN_SPEECH_SECONDS = 0.25  # shorter bursts (a click, a cough) are not speech
PAD_SECONDS = 0.4  # kept on each side of speech, for soft word onsets and endings
MIN_GAP_SECONDS = 2.0  # shorter pauses are part of the speech; longer ones are muted or skipped
# Audio past a window's end that can change its last frames (a pause is judged whole).
LOOKAHEAD_SECONDS = MIN_GAP_SECONDS + 2 * PAD_SECONDS + MIN_SPEECH_SECONDS
LOOKAHEAD_SAMPLES = int(LOOKAHEAD_SECONDS * SAMPLE_RATE)


class SpeechDetector:
    """Silero VAD, loaded once per engine (the model is stateful: one detector per thread)."""

    def __init__(self) -> None:
        threads = torch.get_num_threads()
        from silero_vad import load_silero_vad  # ~0.1 s; only engines that use it pay

        # Importing silero_vad calls torch.set_num_threads(1), for the whole process: Whisper
        # would run on one core from then on (half the speed of two).
        torch.set_num_threads(threads)
        with warnings.catch_warnings():  # its loader uses deprecated importlib and torch.jit calls
            warnings.simplefilter("ignore", DeprecationWarning)
            self.model = load_silero_vad()

    def probabilities(self, piece: np.ndarray, before: np.ndarray) -> np.ndarray:
        """Speech probability of each 10 ms frame of `piece`; `before` is the audio preceding it
        (at most WARMUP_SAMPLES; empty at the start of the file)."""
        if chunking.is_silent(piece):  # silence needs no detector: 3 hours of it stay nearly free
            return np.zeros(len(piece) // HOP_LENGTH, np.float32)
        frames = -(-len(piece) // FRAME_SAMPLES)
        streams = max(1, -(-frames // STREAM_FRAMES))
        padded = np.zeros(WARMUP_SAMPLES + streams * STREAM_FRAMES * FRAME_SAMPLES, np.float32)
        padded[WARMUP_SAMPLES - len(before):WARMUP_SAMPLES] = before
        padded[WARMUP_SAMPLES:WARMUP_SAMPLES + len(piece)] = piece
        stride = STREAM_FRAMES * FRAME_SAMPLES
        audio = torch.from_numpy(padded)
        rows = torch.stack([audio[i * stride:(i + 1) * stride + WARMUP_SAMPLES] for i in range(streams)])
        with torch.inference_mode():
            self.model.reset_states()
            probs = torch.stack([self.model(rows[:, i:i + FRAME_SAMPLES], SAMPLE_RATE)[:, 0]
                                 for i in range(0, rows.shape[1], FRAME_SAMPLES)], 1)
        per_frame = probs[:, WARMUP_FRAMES:].reshape(-1).numpy()
        hops = len(piece) // HOP_LENGTH
        centres = (np.arange(hops) * HOP_LENGTH + HOP_LENGTH // 2) // FRAME_SAMPLES
        return per_frame[centres].astype(np.float32)


def speech(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Which 10 ms frames to keep, from their speech probabilities: Silero's hysteresis, bursts
    shorter than MIN_SPEECH_SECONDS dropped, PAD_SECONDS around speech, pauses under MIN_GAP_SECONDS
    bridged, between speech and at either end. Only long stretches without speech are left out, so
    speech with short pauses reaches the model exactly as it would without VAD. Judged from the
    frames given only, so the same frames always give the same answer."""
    frames_per_second = SAMPLE_RATE / HOP_LENGTH
    raw = voiced(probs, threshold)
    keep = np.zeros(len(probs), bool)
    pad = round(PAD_SECONDS * frames_per_second)
    for start, end in runs(raw):
        if end - start >= MIN_SPEECH_SECONDS * frames_per_second:
            keep[max(0, start - pad):end + pad] = True
    kept = runs(keep)
    gap = MIN_GAP_SECONDS * frames_per_second
    for (_, end), (start, _) in zip(kept, kept[1:]):
        if start - end < gap:
            keep[end:start] = True
    if kept and kept[0][0] < gap:  # and at the ends: speech keeps the short lead-in and tail it came with
        keep[:kept[0][0]] = True
    if kept and len(keep) - kept[-1][1] < gap:
        keep[kept[-1][1]:] = True
    return keep


def voiced(probs: np.ndarray, threshold: float) -> np.ndarray:
    """The 10 ms frames of speech itself, by Silero's hysteresis: no padding, no pauses bridged."""
    raw = np.zeros(len(probs), bool)
    on = False
    for i, p in enumerate(probs):  # a 30 s window is 3000 frames: cheap next to the model
        on = p >= threshold or (on and p >= threshold - HYSTERESIS)
        raw[i] = on
    return raw


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))
