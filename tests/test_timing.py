"""Word timestamps (timing.py): openai-whisper's alignment on our decoder, whole words in every
segment, times where the words are said, across window edges and in Mandarin."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from whisper.audio import N_FRAMES, N_SAMPLES, log_mel_spectrogram, pad_or_trim
from whisper.model import Whisper
from whisper.timing import dtw_cpu
from whisper.timing import find_alignment as whisper_alignment
from whisper.tokenizer import get_tokenizer

from daemon.engine import timing, vad
from daemon.engine.decoder import Decoder
from daemon.engine.transcribe import CHUNK_SECONDS, DecodeSettings, Engine
from daemon.transcript import Segment
from tests.speech import compose, read_audio, real_speech, sentences

FIXTURES = Path(__file__).parent / "fixtures" / "realspeech"


@pytest.mark.parametrize("seed", range(5))
def test_dtw_takes_whispers_path_ties_included(seed: int) -> None:
    rng = np.random.default_rng(seed)
    cost = rng.standard_normal((int(rng.integers(1, 60)), int(rng.integers(1, 400))))
    if seed % 2:
        cost = np.round(cost)  # many equal costs: the tie-breaking decides the path
    assert np.array_equal(timing.dtw(cost), dtw_cpu(cost))


def _words_in_order(segments: list[Segment]) -> None:
    """Each segment is its words, whole, in time order, inside the segment."""
    for seg in segments:
        assert seg.words, seg
        assert seg.text == "".join(w.text for w in seg.words).strip(), seg
        for before, word in zip(seg.words, seg.words[1:]):
            assert before.start <= word.start, (before, word)
        for word in seg.words:
            assert seg.start - 1e-6 <= word.start <= word.end <= seg.end + 1e-6, (seg.start, seg.end, word)
            assert 0.0 <= word.probability <= 1.0
            assert any(c.isalnum() for c in word.text), f"a word of marks only: {word}"


@pytest.mark.slow
def test_the_alignment_is_openai_whispers(fp32_model: Whisper) -> None:
    """Same words and times as whisper's own find_alignment, on the same audio, tokens and weights
    (fp32), from the window as encoded for decoding instead of a second encoder pass."""
    clip = real_speech("en")[0]
    audio = read_audio(clip.audio)
    frames = len(audio) // 160
    mel = pad_or_trim(log_mel_spectrogram(audio, fp32_model.dims.n_mels, padding=N_SAMPLES)[:, :frames], N_FRAMES)
    tokenizer = get_tokenizer(False)
    text = tokenizer.encode(" " + clip.text)
    theirs = whisper_alignment(fp32_model, tokenizer, text, mel, frames)
    with torch.inference_mode():
        audio_features = fp32_model.encoder(mel[None])
    ours = timing.find_alignment(Decoder(fp32_model, tokenizer), audio_features, text, frames)
    assert [w.word for w in ours] == [w.word for w in theirs]
    assert len(ours) > 10
    for a, b in zip(ours, theirs):
        assert abs(a.start - b.start) < 1e-6 and abs(a.end - b.end) < 1e-6, (a, b)
        assert abs(a.probability - b.probability) < 1e-3, (a, b)


@pytest.mark.slow
def test_words_are_timed_where_they_are_said_across_a_window_edge(fp32_model: Whisper, tmp_path: Path) -> None:
    """Sentences at known places, one spoken across the first window's end: every word once, in
    order, and each sentence's first word starts where the sentence does. (The first window starts
    where speech does, less vad.PAD_SECONDS: its end is near 32.6 s.)"""
    s = sentences()[:5]
    edge = 3.0 - vad.PAD_SECONDS + CHUNK_SECONDS
    lead = edge - s[2].seconds / 2 - 3.0 - s[0].seconds - 0.6 - s[1].seconds  # s[2] centred on the edge
    recording = compose([3.0, s[0], s[1], lead, s[2], s[3], 2.0, s[4], 1.0])
    across = [start for start, end, _ in recording.spans if start < edge - 1 and end > edge + 1]
    assert across, recording.spans
    path = recording.write(tmp_path / "edge.wav")
    windows = list(Engine(fp32_model, DecodeSettings()).windows(path))
    decoded = [w for w in windows if w.segments]
    assert decoded[0].checkpoint.offset_seconds <= across[0], "the first window kept the sentence it cut"
    segments = [seg for w in windows for seg in w.segments]
    _words_in_order(segments)
    words = [w for seg in segments for w in seg.words]
    assert all(a.start <= b.start for a, b in zip(words, words[1:]))
    assert " ".join(seg.text for seg in segments) == "".join(w.text for w in words).strip()
    for start, _, text in recording.spans:
        same = [w for w in words if _plain(w.text) == _plain(text.split()[0])]
        first = min(same, key=lambda w: abs(w.start - start))
        assert abs(first.start - start) <= 0.3, (start, text, first)


def _plain(word: str) -> str:
    return word.strip().strip(",.").lower()


@pytest.mark.slow
def test_mandarin_words_are_characters_with_their_marks(base_model: Whisper) -> None:
    """Words of Chinese text are its characters (whisper splits unwritten word boundaries so),
    in the chosen script, with the punctuation pass's marks joined to the character before."""
    clip = sorted(FIXTURES.glob("aishell1_*.flac"))[0]
    segments = [s for w in Engine(base_model, DecodeSettings()).windows(clip) for s in w.segments]
    _words_in_order(segments)
    words = [w for seg in segments for w in seg.words]
    assert all(not w.text.startswith(" ") for w in words[1:]), words
    marked = [w for w in words if unicodedata.category(w.text[-1]).startswith("P")]
    assert marked, "the punctuation pass put no mark anywhere"


@pytest.mark.slow
def test_resumed_words_are_the_uninterrupted_ones(fp32_model: Whisper, tmp_path: Path) -> None:
    """Word times are part of each window's segments, so resume reproduces them exactly."""
    recording = compose([sentences()[0], 20.0, sentences()[1], 20.0, sentences()[2]])
    path = recording.write(tmp_path / "long.wav")
    engine = Engine(fp32_model, DecodeSettings())
    windows = list(engine.windows(path))
    assert len(windows) >= 2
    resumed = [s for w in engine.windows(path, windows[0].checkpoint) for s in w.segments]
    assert list(windows[0].segments) + resumed == [s for w in windows for s in w.segments]
    assert all(s.words for s in resumed)
