"""Decoding with PyAV: every accepted container, streaming pieces, and clear errors for bad files."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from daemon.engine.audio import SAMPLE_RATE, AudioError, stream_audio
from daemon.files.inputs import AUDIO_EXTENSIONS
from tests.speech import VIDEO_FORMATS, UnsupportedFormat, compose, encoders_for, sentences

# Committed encodings of the clip, for extensions whose encoder this PyAV build lacks (make_amr.py says why).
ENCODED_DIR = Path(__file__).resolve().parent / "fixtures" / "encoded"


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return compose(sentences()[:2]).audio


@pytest.mark.parametrize("ext", sorted(AUDIO_EXTENSIONS))
def test_every_watched_extension_decodes(ext: str, clip: np.ndarray, tmp_path: Path) -> None:
    try:
        encoders_for(ext, with_video=ext in VIDEO_FORMATS)
        path = compose(sentences()[:2]).write(tmp_path / f"clip{ext}", with_video=ext in VIDEO_FORMATS)
    except UnsupportedFormat:
        path = ENCODED_DIR / f"two_sentences{ext}"
    audio = np.concatenate(list(stream_audio(path, SAMPLE_RATE * 30)))
    assert audio.dtype == np.float32
    assert abs(len(audio) - len(clip)) / SAMPLE_RATE < 0.25
    assert np.abs(audio).max() > 0.05  # real sound, not silence


def test_pieces_have_the_requested_size(tmp_path: Path, clip: np.ndarray) -> None:
    path = compose(sentences()[:2]).write(tmp_path / "a.wav")
    pieces = list(stream_audio(path, SAMPLE_RATE))
    assert all(len(p) == SAMPLE_RATE for p in pieces[:-1])
    assert 0 < len(pieces[-1]) <= SAMPLE_RATE
    assert sum(map(len, pieces)) == len(clip)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(random.Random(0).randbytes(20_000)), "not a recognisable audio"),  # seeded: see test_e2e
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_text("just some notes, not audio\n" * 50), "not a recognisable audio"),
    ],
    ids=["random-bytes", "zero-bytes", "text"],
)
def test_bad_files_raise_audio_error(tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.mp3"
    make(path)
    with pytest.raises(AudioError, match=message):
        list(stream_audio(path, SAMPLE_RATE))


def test_video_without_audio_track(tmp_path: Path) -> None:
    import av

    path = tmp_path / "silent.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=5)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with pytest.raises(AudioError, match="no audio track"):
        list(stream_audio(path, SAMPLE_RATE))
