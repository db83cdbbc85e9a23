"""No hallucinated text: on recordings with no speech the transcript is empty, a long quiet tail after
the speech adds nothing, and speech over quiet music is still transcribed.

Runs the default model (base, what users get) with the default settings, through the engine the
worker uses. The corpus is tests/fixtures/nonspeech (see its README); the two composed cases come
from tests/nonspeech.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests import nonspeech
from tests.speech import wer

if TYPE_CHECKING:
    from whisper.model import Whisper

    from daemon.engine.transcribe import Engine
    from daemon.transcript import Segment

pytestmark = pytest.mark.slow

TAIL_GRACE_SECONDS = 1.0  # a cue may start this long after the last word ends, no later
WER_MARGIN = 0.05  # speech in noise or music may cost this much WER over the same speech alone (~2 of 45 words)


@pytest.fixture(scope="module")
def engine(base_model: Whisper) -> Engine:
    from daemon.engine.transcribe import DecodeSettings, Engine

    return Engine(base_model, DecodeSettings())


def transcribe(engine: Engine, path: Path) -> list[Segment]:
    return [segment for window in engine.windows(path) for segment in window.segments]


def text_of(segments: list[Segment]) -> str:
    return " ".join(s.text for s in segments)


def cues(segments: list[Segment]) -> str:
    return "; ".join(f"{s.start:.1f}-{s.end:.1f} s {s.text!r}" for s in segments)


@pytest.fixture(scope="module")
def over_music(tmp_path_factory: pytest.TempPathFactory, engine: Engine) -> dict[str, float]:
    """WER of the English passage alone and over quiet music: the clean one is the bar for both
    composed cases."""
    clean, mixed = nonspeech.speech_over_music()
    folder = tmp_path_factory.mktemp("over-music")
    return {name: wer(rec.text, text_of(transcribe(engine, rec.write(folder / f"{name}.flac"))))
            for name, rec in (("clean", clean), ("mixed", mixed))}


@pytest.mark.parametrize("clip", nonspeech.clips(), ids=lambda path: path.stem)
def test_no_words_on_a_recording_without_speech(engine: Engine, clip: Path) -> None:
    segments = transcribe(engine, clip)
    count = nonspeech.word_count(text_of(segments))
    assert count == 0, f"{clip.name}: {count} words invented: {cues(segments)}"


def test_nothing_after_the_speech_ends(engine: Engine, tmp_path: Path, over_music: dict[str, float]) -> None:
    case = nonspeech.speech_then_room_tone(tail_seconds=60)
    segments = transcribe(engine, case.recording.write(tmp_path / "tail.flac"))
    late = [s for s in segments if s.start > case.speech_end + TAIL_GRACE_SECONDS]
    assert not late, f"speech ends at {case.speech_end:.1f} s, yet: {cues(late)}"
    # The speech itself is all there, and nothing was invented in it either.
    score = wer(case.recording.text, text_of(segments))
    assert score <= over_music["clean"] + WER_MARGIN, (
        f"WER {score:.1%} with the quiet tail vs {over_music['clean']:.1%} alone: {cues(segments)}")


def test_speech_over_quiet_music_is_transcribed(over_music: dict[str, float]) -> None:
    assert over_music["mixed"] <= over_music["clean"] + WER_MARGIN, (
        f"WER {over_music['mixed']:.1%} with music {nonspeech.MUSIC_BELOW_SPEECH_DB:g} dB below the speech, "
        f"{over_music['clean']:.1%} without")
