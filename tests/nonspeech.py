"""Recordings with nothing to transcribe, for the "no hallucinated text" tests and benchmark.

The clips in tests/fixtures/nonspeech/ (room tone, noise, music, applause, typing, hum) were made
once by tests/fixtures/make_nonspeech.py and committed. Two harder cases are composed here from
committed pieces rather than stored: real speech followed by a long quiet tail, and real speech
over quiet music.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.speech import SAMPLE_RATE, Recording, read_audio, real_speech

NONSPEECH_DIR = Path(__file__).resolve().parent / "fixtures" / "nonspeech"
SPEECH_GAP_SECONDS = 0.5  # between the real clips joined into one passage
MUSIC_BELOW_SPEECH_DB = 18.0  # background music this far below the speech (RMS)
# A word as a reader counts it: a run of letters or digits, or one Han/kana/Hangul character
# (a model that thinks noise is Japanese writes no spaces).
_WORD = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]|[^\W_]+")


def clips() -> list[Path]:
    """The committed non-speech clips, by name."""
    return sorted(NONSPEECH_DIR.glob("*.flac"))


def word_count(text: str) -> int:
    """Words in a transcript, in any script. Unlike tests.speech.words, no normaliser: it would
    drop fillers such as "Hmm", which are still invented text on a recording with no speech."""
    return len(_WORD.findall(text))


def _rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


def _tiled(audio: np.ndarray, samples: int) -> np.ndarray:
    return np.resize(audio, samples).astype(np.float32)  # np.resize repeats the clip as needed


def english_passage() -> Recording:
    """The committed English real-speech clips (LJSpeech) joined with short pauses, one recording
    with its reference text and each clip's span."""
    pieces: list[np.ndarray] = []
    spans: list[tuple[float, float, str]] = []
    position = 0
    gap = np.zeros(round(SPEECH_GAP_SECONDS * SAMPLE_RATE), np.float32)
    for clip in real_speech("en"):
        if pieces:
            pieces.append(gap)
            position += gap.size
        audio = read_audio(clip.audio)
        spans.append((position / SAMPLE_RATE, (position + audio.size) / SAMPLE_RATE, clip.text))
        pieces.append(audio)
        position += audio.size
    return Recording(np.concatenate(pieces), " ".join(text for *_, text in spans), spans)


@dataclass(frozen=True)
class SpeechThenTail:
    recording: Recording  # the speech, then the tail
    speech_end: float  # seconds: where the last word ends


def speech_then_room_tone(tail_seconds: float = 60.0) -> SpeechThenTail:
    """The English passage followed by `tail_seconds` of room tone, room tone under the speech too
    (a meeting recording left running after everyone stopped talking)."""
    speech = english_passage()
    room = read_audio(NONSPEECH_DIR / "room_tone.flac")
    total = speech.audio.size + round(tail_seconds * SAMPLE_RATE)
    audio = _tiled(room, total)
    audio[: speech.audio.size] += speech.audio
    return SpeechThenTail(Recording(audio, speech.text, speech.spans), speech.spans[-1][1])


def speech_over_music(below_db: float = MUSIC_BELOW_SPEECH_DB,
                      lead_seconds: float = 1.0) -> tuple[Recording, Recording]:
    """(the English passage alone, the same passage over the music clip `below_db` dB quieter
    than the speech), the music starting `lead_seconds` before the speech and running as long after."""
    speech = english_passage()
    lead = round(lead_seconds * SAMPLE_RATE)
    clean = np.zeros(speech.audio.size + 2 * lead, np.float32)
    clean[lead: lead + speech.audio.size] = speech.audio
    spans = [(start + lead_seconds, end + lead_seconds, text) for start, end, text in speech.spans]
    music = _tiled(read_audio(NONSPEECH_DIR / "music.flac"), clean.size)
    music *= _rms(speech.audio) * 10 ** (-below_db / 20) / _rms(music)
    return Recording(clean, speech.text, spans), Recording(clean + music, speech.text, spans)
