"""Real English speech for end-to-end tests and benchmarks.

The sentences in tests/fixtures/speech/ were spoken once by espeak-ng (see
tests/fixtures/make_speech.py) and committed, so nothing here needs espeak-ng.
This module composes them into recordings with known text and timing, writes
them in any container/codec the daemon should accept, and scores transcripts.

Dependencies are deliberately limited to numpy, PyAV and whisper's text
normalizer (imported lazily, because importing whisper pulls in torch).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import unicodedata
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import av
import numpy as np

SAMPLE_RATE = 16000
SPEECH_DIR = Path(__file__).resolve().parent / "fixtures" / "speech"
REAL_SPEECH_DIR = Path(__file__).resolve().parent / "fixtures" / "realspeech"  # <language>/<clip>.wav + .txt


class UnsupportedFormat(RuntimeError):
    """This PyAV/FFmpeg build cannot encode the requested format (tests may skip on it)."""


# --------------------------------------------------------------------------- reading


def read_audio(path: Path | str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream of any file to float32 mono at `sample_rate`."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    chunks: list[np.ndarray] = []
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):  # flush the resampler's buffered tail
            chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)


@lru_cache(maxsize=None)
def _load_cached(path: Path) -> np.ndarray:
    audio = read_audio(path)
    audio.flags.writeable = False  # the shared master copy; Sentence.audio hands out copies
    return audio


# --------------------------------------------------------------------------- sentences


@dataclass(frozen=True)
class Sentence:
    file: Path
    text: str
    voice: str
    seconds: float

    @property
    def audio(self) -> np.ndarray:
        """float32 mono 16 kHz, decoded once and cached.

        Returns a private copy: callers may modify it, and torch.from_numpy (inside
        whisper) warns on read-only arrays.
        """
        return _load_cached(self.file).copy()


@lru_cache(maxsize=1)
def _manifest() -> tuple[Sentence, ...]:
    entries = json.loads((SPEECH_DIR / "manifest.json").read_text())
    return tuple(
        Sentence(
            file=SPEECH_DIR / e["file"],
            text=e["text"],
            voice=e["voice"],
            seconds=float(e["seconds"]),
        )
        for e in entries
    )


def sentences() -> list[Sentence]:
    """All committed sentences, in manifest order (a fresh list; safe to shuffle)."""
    return list(_manifest())


@dataclass(frozen=True)
class RealClip:
    """A recording of a real person and its corpus's reference transcript (licence: the README beside it)."""

    audio: Path
    text: str


def real_speech(language: str) -> list[RealClip]:
    """The real recordings in tests/fixtures/realspeech/<language>/, by name. Score English with `wer`."""
    return [RealClip(path, path.with_suffix(".txt").read_text(encoding="utf-8").strip())
            for path in sorted((REAL_SPEECH_DIR / language).iterdir()) if path.suffix in (".wav", ".flac")]


# --------------------------------------------------------------------------- composing


@dataclass
class Recording:
    audio: np.ndarray  # float32 mono at SAMPLE_RATE
    text: str  # space-joined sentence texts, the reference transcript
    spans: list[tuple[float, float, str]] = field(default_factory=list)  # (start s, end s, text)
    sample_rate: int = SAMPLE_RATE

    @property
    def seconds(self) -> float:
        return self.audio.size / self.sample_rate

    def write(self, path: Path | str, with_video: bool = False) -> Path:
        return write_audio(self.audio, path, self.sample_rate, with_video=with_video)


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(max(0, round(seconds * SAMPLE_RATE)), dtype=np.float32)


def compose(parts: Iterable[Sentence | float], gap_seconds: float = 0.6) -> Recording:
    """Concatenate sentences and silences.

    A float part is that many seconds of silence, placed exactly where it is.
    Two directly adjacent sentences get `gap_seconds` of silence between them,
    so `compose([a, b])` sounds natural without spelling out every pause.
    """
    pieces: list[np.ndarray] = []
    spans: list[tuple[float, float, str]] = []
    texts: list[str] = []
    position = 0  # in samples, so span times do not accumulate rounding error
    previous_was_sentence = False
    for part in parts:
        if isinstance(part, Sentence):
            if previous_was_sentence and gap_seconds > 0:
                gap = _silence(gap_seconds)
                pieces.append(gap)
                position += gap.size
            audio = _load_cached(part.file)  # no copy needed: concatenate copies
            spans.append((position / SAMPLE_RATE, (position + audio.size) / SAMPLE_RATE, part.text))
            texts.append(part.text)
            pieces.append(audio)
            position += audio.size
            previous_was_sentence = True
        else:
            gap = _silence(float(part))
            pieces.append(gap)
            position += gap.size
            previous_was_sentence = False
    audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    return Recording(audio=audio.astype(np.float32, copy=False), text=" ".join(texts), spans=spans)


def meeting(
    seconds: float, seed: int = 0, pause_range: tuple[float, float] = (0.3, 1.5)
) -> Recording:
    """A deterministic pseudo-meeting at least `seconds` long.

    Sentences are shuffled, used in full passes (reshuffled per pass) so long
    meetings repeat material evenly, and separated by random pauses.
    """
    rng = random.Random(seed)  # local RNG: reproducible and does not touch global state
    pool = sentences()
    parts: list[Sentence | float] = []
    needed = math.ceil(seconds * SAMPLE_RATE)
    total = 0  # samples; pauses are whole samples so compose() reproduces this exactly
    last: Sentence | None = None
    while total < needed or not parts:
        order = pool[:]
        rng.shuffle(order)
        if last is not None and order[0] == last and len(order) > 1:
            order[0], order[-1] = order[-1], order[0]  # no sentence twice in a row
        for sentence in order:
            if parts:
                pause = round(rng.uniform(*pause_range) * SAMPLE_RATE)
                parts.append(pause / SAMPLE_RATE)
                total += pause
            parts.append(sentence)
            total += _load_cached(sentence.file).size
            last = sentence
            if total >= needed:
                break
    return compose(parts, gap_seconds=0.0)


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class _Format:
    container: str  # FFmpeg muxer name
    audio_codecs: tuple[str, ...]  # first one this build can encode wins
    video_codecs: tuple[str, ...] = ()  # empty: container gets no video option
    rate: int | None = None  # the only sample rate the codec takes, when it does not say so itself
    bit_rate: int | None = None  # for codecs that have no default and refuse to open without one


# Audio codecs are listed by preference. Native "vorbis" is left out on purpose:
# FFmpeg's built-in Vorbis encoder is experimental and stereo-only.
_FORMATS: dict[str, _Format] = {
    ".wav": _Format("wav", ("pcm_s16le",)),
    ".flac": _Format("flac", ("flac",)),
    ".m4a": _Format("ipod", ("aac",)),
    ".mp3": _Format("mp3", ("libmp3lame",)),
    ".ogg": _Format("ogg", ("libvorbis", "libopus")),
    ".opus": _Format("opus", ("libopus",)),
    ".aac": _Format("adts", ("aac",)),
    ".mp4": _Format("mp4", ("aac",), ("mpeg4", "libx264")),
    ".mov": _Format("mov", ("aac",), ("mpeg4", "libx264")),
    ".webm": _Format("webm", ("libopus",), ("libvpx", "libvpx-vp9")),
    ".mkv": _Format("matroska", ("aac", "libopus"), ("mpeg4", "libx264")),
    ".m4v": _Format("mp4", ("aac",), ("mpeg4", "libx264")),
    ".aiff": _Format("aiff", ("pcm_s16be",)),
    ".aif": _Format("aiff", ("pcm_s16be",)),
    ".caf": _Format("caf", ("alac", "pcm_s16le")),
    ".amr": _Format("amr", ("libopencore_amrnb",), rate=8000),  # narrow-band phone audio
    ".3gp": _Format("3gp", ("aac", "libopencore_amrnb")),
    ".wma": _Format("asf", ("wmav2",), bit_rate=64_000),
}
FORMATS: tuple[str, ...] = tuple(_FORMATS)
VIDEO_FORMATS: tuple[str, ...] = tuple(ext for ext, f in _FORMATS.items() if f.video_codecs)

_VIDEO_FPS = 2  # low rate: the video only has to exist, not to look like anything
_VIDEO_SIZE = 64  # pixels square; even, as yuv420p requires


def _pick(candidates: Sequence[str], what: str, ext: str) -> str:
    for name in candidates:
        if name in av.codecs_available:
            try:
                av.Codec(name, "w")  # present in the list can still mean decoder-only
                return name
            except ValueError:  # av's UnknownCodecError
                continue
    raise UnsupportedFormat(
        f"cannot write {ext}: this PyAV/FFmpeg build has no {what} encoder among "
        f"{', '.join(candidates)}"
    )


def encoders_for(ext: str, with_video: bool = False) -> tuple[str, str | None]:
    """(audio codec, video codec or None) write_audio would use; raises UnsupportedFormat."""
    ext = ext.lower()
    fmt = _FORMATS.get(ext)
    if fmt is None:
        raise UnsupportedFormat(f"unknown extension {ext!r}; supported: {', '.join(FORMATS)}")
    audio_codec = _pick(fmt.audio_codecs, "audio", ext)
    if not with_video:
        return audio_codec, None
    if not fmt.video_codecs:
        raise UnsupportedFormat(f"{ext} has no video option; use one of {', '.join(VIDEO_FORMATS)}")
    return audio_codec, _pick(fmt.video_codecs, "video", ext)


def available_formats(with_video: bool = False) -> list[str]:
    """Extensions this machine can write, e.g. for pytest parametrisation."""
    names = VIDEO_FORMATS if with_video else FORMATS
    out: list[str] = []
    for ext in names:
        try:
            encoders_for(ext, with_video)
        except UnsupportedFormat:
            continue
        out.append(ext)
    return out


def write_audio(
    audio: np.ndarray,
    path: Path | str,
    sample_rate: int = SAMPLE_RATE,
    with_video: bool = False,
    faststart: bool = False,
) -> Path:
    """Encode mono float audio to `path`; container and codec follow the extension.

    with_video=True (.mp4, .mov, .webm) adds a tiny black video stream covering
    the same duration, to exercise "the audio track of a video file".
    faststart=True (.m4a, .mp4, .mov) puts the index (moov) before the data, as
    phones and web exports do, so a file cut short still has its index.
    """
    samples = np.ascontiguousarray(np.clip(audio, -1.0, 1.0), dtype=np.float32).reshape(-1)
    return _encode(Path(path), [samples], samples.size, sample_rate, with_video, faststart)


def write_silence(path: Path | str, seconds: float, noise_dbfs: float | None = None, seed: int = 0) -> Path:
    """`seconds` of digital silence, or of white noise at `noise_dbfs` RMS (a quiet room through a
    microphone), encoded a block at a time: hours of it never sit in memory."""
    total = round(seconds * SAMPLE_RATE)
    rng = np.random.default_rng(seed)
    block = 60 * SAMPLE_RATE

    def blocks() -> Iterator[np.ndarray]:
        for start in range(0, total, block):
            n = min(block, total - start)
            if noise_dbfs is None:
                yield np.zeros(n, np.float32)
            else:
                yield (rng.standard_normal(n) * 10 ** (noise_dbfs / 20)).astype(np.float32)

    return _encode(Path(path), blocks(), total, SAMPLE_RATE, with_video=False, faststart=False)


def write_video_only(path: Path | str, seconds: float) -> Path:
    """A video file with no audio track at all (a screen recording made without sound)."""
    path = Path(path)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None or not fmt.video_codecs:
        raise UnsupportedFormat(f"{path.suffix} has no video option; use one of {', '.join(VIDEO_FORMATS)}")
    codec = _pick(fmt.video_codecs, "video", path.suffix)
    with av.open(str(path), mode="w", format=fmt.container) as container:
        _mux_black_video(container, _add_video_stream(container, codec), seconds)
    return path


def _encode(path: Path, blocks: Iterable[np.ndarray], total_samples: int, sample_rate: int,
            with_video: bool, faststart: bool) -> Path:
    audio_codec, video_codec = encoders_for(path.suffix, with_video)
    fmt = _FORMATS[path.suffix.lower()]
    options = {"movflags": "faststart"} if faststart else {}

    with av.open(str(path), mode="w", format=fmt.container, options=options) as container:
        codec = av.Codec(audio_codec, "w")
        # Keep the input rate when the codec allows it; otherwise (opus at 44.1 kHz,
        # say) take the nearest higher supported rate. PyAV resamples on encode.
        rates = sorted(codec.audio_rates or ([fmt.rate] if fmt.rate else []))
        rate = sample_rate
        if rates and sample_rate not in rates:
            rate = next((r for r in rates if r >= sample_rate), rates[-1])
        astream = container.add_stream(audio_codec, rate=rate, layout="mono")
        formats = [f.name for f in codec.audio_formats or []]
        for preferred in ("flt", "fltp", "s16", "s16p"):
            if preferred in formats:
                astream.format = preferred
                break
        if fmt.bit_rate:
            astream.bit_rate = fmt.bit_rate
        vstream = _add_video_stream(container, video_codec) if video_codec is not None else None

        # Audio: feed fixed-size frames; PyAV converts format/rate and re-chunks to
        # the encoder's frame size.
        frame_samples = 4096
        position = 0
        for samples in blocks:
            for start in range(0, samples.size, frame_samples):
                chunk = samples[start : start + frame_samples].reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                frame.sample_rate = sample_rate
                frame.pts = position
                frame.time_base = Fraction(1, sample_rate)
                position += chunk.shape[1]
                container.mux(astream.encode(frame))
        container.mux(astream.encode(None))

        if vstream is not None:
            _mux_black_video(container, vstream, total_samples / sample_rate)
    return path


def _add_video_stream(container: av.container.OutputContainer, codec: str) -> av.VideoStream:
    # Every stream must exist before the first packet is muxed.
    vstream = container.add_stream(codec, rate=_VIDEO_FPS)
    vstream.width = _VIDEO_SIZE
    vstream.height = _VIDEO_SIZE
    vstream.pix_fmt = "yuv420p"
    return vstream


def _mux_black_video(container: av.container.OutputContainer, vstream: av.VideoStream, seconds: float) -> None:
    """Enough black frames to span `seconds`, so the container duration matches the audio."""
    count = max(1, math.ceil(seconds * _VIDEO_FPS))
    black = np.zeros((_VIDEO_SIZE, _VIDEO_SIZE, 3), dtype=np.uint8)
    for index in range(count):
        frame = av.VideoFrame.from_ndarray(black, format="rgb24").reformat(format="yuv420p")
        frame.pts = index
        container.mux(vstream.encode(frame))
    container.mux(vstream.encode(None))


# --------------------------------------------------------------------------- scoring


@lru_cache(maxsize=1)
def _normalizer() -> Callable[[str], str]:
    # Imported here: `import whisper` loads torch, which benchmark helpers that
    # only compose audio should not pay for.
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


def edit_distance(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Levenshtein distance between two sequences (of words or characters), one row at a time."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_item in enumerate(reference, start=1):
        current = [i] + [0] * len(hypothesis)
        for j, hyp_item in enumerate(hypothesis, start=1):
            current[j] = min(
                previous[j] + 1,  # deletion
                current[j - 1] + 1,  # insertion
                previous[j - 1] + (ref_item != hyp_item),  # substitution or match
            )
        previous = current
    return previous[-1]


def _error_rate(ref: Sequence[str], hyp: Sequence[str]) -> float:
    if not ref:
        return 0.0 if not hyp else float(len(hyp))  # every hypothesis item is an insertion
    return edit_distance(ref, hyp) / len(ref)


def words(text: str) -> list[str]:
    """What an English word error rate compares: the words after whisper's English normaliser."""
    return _normalizer()(text).split()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate after whisper's English normalisation (can exceed 1.0)."""
    return _error_rate(words(reference), words(hypothesis))


def mandarin_characters(text: str) -> str:
    """What a Mandarin character error rate compares: no punctuation, no spaces, simplified script."""
    from daemon.engine.chinese import convert  # OpenCC: only for the Mandarin scorers

    return "".join(c for c in convert(text, "simplified")
                   if not unicodedata.category(c).startswith(("P", "Z", "S", "C")))


def cer(reference: str, hypothesis: str) -> float:
    """Character error rate of Mandarin text, both sides as `mandarin_characters` (can exceed 1.0)."""
    return _error_rate(mandarin_characters(reference), mandarin_characters(hypothesis))


# --------------------------------------------------------------------------- slow writes


def write_slowly(data: bytes, path: Path | str, seconds: float, pieces: int = 10) -> float:
    """Write `data` to `path` in `pieces` chunks spread over `seconds`; return the longest time
    between two pieces landing (a busy machine stretches it beyond `seconds / (pieces - 1)`).

    The file exists (partially written) from the first chunk until the last one
    lands about `seconds` later, which is what a watcher must not pick up early.
    Run it in a thread when the test needs to act meanwhile.
    """
    pieces = max(1, min(pieces, len(data) or 1))
    bounds = [round(i * len(data) / pieces) for i in range(pieces + 1)]
    interval = seconds / (pieces - 1) if pieces > 1 else 0.0
    landed: list[float] = []  # when each piece was on disk
    with open(path, "wb") as handle:
        for index in range(pieces):
            if index:
                time.sleep(interval)  # inherent: the point is wall-clock slowness
            handle.write(data[bounds[index] : bounds[index + 1]])
            handle.flush()
            os.fsync(handle.fileno())  # make each piece visible to other processes now
            landed.append(time.monotonic())
    return max((later - earlier for earlier, later in zip(landed, landed[1:])), default=0.0)
