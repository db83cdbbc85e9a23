"""Where to cut a long recording into independent chunks: at quiet points, never mid-word.

Batched decoding needs chunks that do not depend on each other, so a cut must fall where
nobody is speaking. We cut at the quietest 100 ms in the last seconds before the window
limit, and mark chunks with no sound at all so they cost no model time.
"""

from __future__ import annotations

import numpy as np

from daemon.engine.audio import SAMPLE_RATE

FRAME_SAMPLES = SAMPLE_RATE // 10  # 100 ms energy frames
SEARCH_SECONDS = 8.0  # look for the quietest frame in this stretch before the window limit
QUIET_TOLERANCE = 1.5  # frames this close to the quietest one count as the same pause
SILENCE_RMS = 1e-3  # −60 dBFS: below any speech, above digital silence and dithering


def frame_rms(audio: np.ndarray) -> np.ndarray:
    usable = len(audio) - len(audio) % FRAME_SAMPLES
    frames = audio[:usable].reshape(-1, FRAME_SAMPLES)
    return np.sqrt(np.mean(np.square(frames, dtype=np.float64), axis=1))


def quiet_cut(audio: np.ndarray, limit: int) -> int:
    """A cut position in (limit − SEARCH_SECONDS, limit]: the middle of the last run of the
    quietest 100 ms frames, so each chunk starts after a little silence, not right at a word."""
    search = int(SEARCH_SECONDS * SAMPLE_RATE)
    start = max(0, limit - search)
    rms = frame_rms(audio[start:limit])
    if len(rms) == 0:
        return limit
    quiet = rms <= rms.min() * QUIET_TOLERANCE + 1e-6
    last = len(quiet) - 1 - int(np.argmax(quiet[::-1]))
    first = last
    while first > 0 and quiet[first - 1]:
        first -= 1
    return start + (first + last + 1) * FRAME_SAMPLES // 2


def plan(audio: np.ndarray, window: int, final: bool, max_chunks: int) -> list[tuple[int, int]]:
    """Up to `max_chunks` consecutive (start, end) chunks of at most `window` samples from the
    start of `audio`. Without `final`, a chunk is only cut where the audio after it is known."""
    chunks: list[tuple[int, int]] = []
    pos = 0
    while len(chunks) < max_chunks and pos < len(audio):
        remaining = len(audio) - pos
        if remaining <= window:
            if not final:
                break
            chunks.append((pos, len(audio)))
            break
        cut = quiet_cut(audio, pos + window)
        chunks.append((pos, cut))
        pos = cut
    return chunks


def is_silent(audio: np.ndarray) -> bool:
    rms = frame_rms(audio)
    return len(rms) == 0 or float(rms.max()) < SILENCE_RMS
