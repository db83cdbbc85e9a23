"""Plain data passed between the engine, the queue and the output formats (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Word:
    """One word with its time, from the cross-attention alignment (timing.py)."""

    start: float  # seconds from the start of the recording
    end: float
    text: str  # as the transcript writes it: with its leading space in spaced scripts, none in CJK
    probability: float = 1.0  # the mean of the model's probabilities of the word's tokens
    speaker: str | None = None  # "Speaker 2": only when more than one voice was told apart


@dataclass(frozen=True)
class Segment:
    start: float  # seconds from the start of the recording, never from the window
    end: float
    text: str  # when `words` is not empty: exactly "".join(w.text for w in words).strip()
    tokens: tuple[int, ...] = ()  # with timestamps: fed back as the next window's prompt
    words: tuple[Word, ...] = ()  # empty for segments stored before word timing existed
    speaker: str | None = None  # the speaker of all its words (a segment two people share is split)


@dataclass(frozen=True)
class Voice:
    """A voice print of a stretch of speech (engine/speakers): what telling speakers apart needs
    of the audio, kept in the queue so that labels are made again without the audio or the model."""

    start: float  # seconds from the start of the recording
    end: float
    vector: bytes  # the speaker embedding: float32 numbers, little-endian


@dataclass(frozen=True)
class Turn:
    """A stretch of one speaker's speech, as the voice prints heard it (RTTM's unit)."""

    start: float
    end: float
    speaker: str


@dataclass(frozen=True)
class Transcript:
    """What every output format renders: a job's segments and what it was made with."""

    segments: tuple[Segment, ...]
    language: str | None = None
    model: str | None = None
    duration: float | None = None  # seconds of audio
    # What the file's header announced, when the audio ended well before that (a download that
    # stopped): the transcript is of `duration` seconds only, and says so. None otherwise.
    announced: float | None = None
    name: str | None = None  # the recording's file name without its suffix: RTTM's file id
    turns: tuple[Turn, ...] = ()  # who spoke when, from the speech itself; () without speaker labels

    @property
    def speakers(self) -> tuple[str, ...]:
        """The speakers told apart, in order of first appearance; () when there are no labels."""
        return tuple(dict.fromkeys(seg.speaker for seg in self.segments if seg.speaker))


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
    # VAD's speech probability of each 10 ms frame the window moved past (float32 bytes; None without
    # VAD): the speaker pass reuses them rather than run the detector over the file again.
    speech: bytes | None = None
