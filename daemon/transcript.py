"""Plain data passed between the engine, the queue and the SRT writer (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Segment:
    start: float  # seconds from the start of the recording, never from the window
    end: float
    text: str
    tokens: tuple[int, ...] = ()  # with timestamps: fed back as the next window's prompt


@dataclass(frozen=True)
class Checkpoint:
    """Everything needed to continue a transcription exactly where it stopped."""

    offset_seconds: float = 0.0  # the next window starts here (a whole number of 10 ms mel frames)
    prompt: tuple[int, ...] = ()  # previous text tokens, as Whisper's transcribe() would carry them
    language: str | None = None


@dataclass(frozen=True)
class Window:
    """The outcome of one decoded window: its finished segments and the state after it."""

    segments: tuple[Segment, ...]
    checkpoint: Checkpoint
    decoded_seconds: float  # audio decoded so far; the whole length once the file is exhausted
    # Seconds of audio given to the model in this window, summed over the mels it ran on; 0.0 when
    # the window was skipped without running it. Wall time per model second is the CPU's pace.
    model_seconds: float
