"""Chunked streaming with the real tiny.en model: boundaries, global timestamps, exact resume."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest
from whisper.model import Whisper

from daemon.engine.transcribe import Engine
from daemon.transcript import Checkpoint, Segment
from tests.speech import compose, meeting, sentences, wer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(fp32_model: Whisper) -> Engine:
    return Engine(fp32_model)


def transcribe(engine: Engine, path: Path, start: Checkpoint = Checkpoint()) -> list[Segment]:
    return [seg for window in engine.windows(path, start) for seg in window.segments]


def test_a_sentence_spoken_across_the_30s_mark_comes_out_once(engine: Engine, tmp_path: Path) -> None:
    pool = sentences()
    lead = compose(pool[:4])
    across = pool[4]
    assert across.seconds > 3
    # Start the sentence so that 30.0 s falls in its middle.
    pad = 30.0 - across.seconds / 2 - lead.seconds
    assert pad > 0.3
    recording = compose([*pool[:4], pad, across, 0.6, *pool[5:8]], gap_seconds=0.6)
    start, end, _ = recording.spans[4]
    assert start < 30.0 < end
    path = recording.write(tmp_path / "across.wav")
    text = " ".join(seg.text for seg in transcribe(engine, path))
    assert wer(recording.text, text) <= 0.15
    assert wer(across.text, text) > 0.5  # sanity: the metric sees the rest of the text too
    key = max(across.text.split(), key=len).strip(".,?").lower()
    assert text.lower().count(key) == recording.text.lower().count(key), (key, text)


def test_timestamps_are_global_and_monotonic_over_many_chunks(engine: Engine, tmp_path: Path) -> None:
    recording = meeting(125, seed=7)  # more than four 30 s windows
    path = recording.write(tmp_path / "long.m4a")
    segments = transcribe(engine, path)
    assert wer(recording.text, " ".join(s.text for s in segments)) <= 0.15
    assert all(s.end > s.start for s in segments)
    assert all(a.start < b.start and a.end <= b.start + 1e-6 for a, b in itertools.pairwise(segments))
    assert segments[-1].end <= recording.seconds + 0.05
    # Every sentence starts where it was spoken, far past the first window too.
    starts = [s.start for s in segments]
    for spoken_at, _, _ in recording.spans:
        assert min(abs(spoken_at - t) for t in starts) < 1.5, spoken_at
    assert recording.spans[-1][0] > 90


def test_resuming_from_any_checkpoint_gives_the_uninterrupted_result(engine: Engine, tmp_path: Path) -> None:
    path = meeting(100, seed=11).write(tmp_path / "m.mp3")
    windows = list(engine.windows(path))
    assert len(windows) >= 4
    uninterrupted = [s for w in windows for s in w.segments]
    for stop_after in (1, len(windows) - 2):
        before = [s for w in windows[:stop_after] for s in w.segments]
        resumed = transcribe(engine, path, windows[stop_after - 1].checkpoint)
        assert before + resumed == uninterrupted, f"differs when resuming after window {stop_after}"


def test_chunk_length_is_configurable(tmp_path: Path, engine: Engine) -> None:
    recording = compose(sentences()[8:13])
    path = recording.write(tmp_path / "short-chunks.wav")
    short = Engine(engine.model, replace(engine.settings, chunk_seconds=10))
    windows = list(short.windows(path))
    offsets = [w.checkpoint.offset_seconds for w in windows]
    assert all(b - a <= 10.0 + 1e-9 for a, b in zip([0.0, *offsets], offsets))
    assert len(windows) >= recording.seconds / 10
    assert wer(recording.text, " ".join(s.text for w in windows for s in w.segments)) <= 0.2


@pytest.mark.parametrize("batch_size", [1, 3])
def test_model_seconds_count_only_the_audio_the_model_ran_on(engine: Engine, tmp_path: Path, batch_size: int) -> None:
    """What the throttle guard's pace is measured against: silence skipped costs no model time."""
    recording = compose([70.0, *sentences()[:5]])
    path = recording.write(tmp_path / "late start.wav")
    windows = list(Engine(engine.model, replace(engine.settings, batch_size=batch_size)).windows(path))
    spoken = recording.seconds - recording.spans[0][0]
    ran = sum(w.model_seconds for w in windows)
    assert spoken <= ran <= recording.seconds - 40, (spoken, ran)  # at least 40 s of the silence was skipped
    assert all(w.model_seconds > 0 for w in windows if w.segments)
    if batch_size == 1:  # Whisper's own seek loop: the two silent windows were skipped
        assert [w.model_seconds for w in windows[:2]] == [0.0, 0.0]
