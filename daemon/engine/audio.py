"""Audio decoding with PyAV (bundled FFmpeg): any audio or video file → 16 kHz mono float32 pieces."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
from loguru import logger

from daemon.storage import storage_trouble

SAMPLE_RATE = 16_000  # what Whisper was trained on


class AudioError(Exception):
    """A file the user dropped cannot be transcribed; the message says why in plain words."""


def _open(path: Path) -> av.container.InputContainer:
    try:
        size = path.stat().st_size
    except OSError as e:
        if storage_trouble(e):
            raise
        raise AudioError(f"cannot read the file: {e.strerror}") from e
    if size == 0:
        raise AudioError("the file is empty (0 bytes); it may not have finished copying")
    try:
        return av.open(str(path), metadata_errors="ignore")
    except OSError as e:  # PyAV's errors for EACCES, EISDIR, … are OSErrors too: say which
        if storage_trouble(e):  # EIO, a share gone: not the file's fault, the worker tries again later
            raise
        raise AudioError(f"cannot read the file: {e.strerror}") from e
    except (av.FFmpegError, UnicodeDecodeError) as e:
        with path.open("rb") as f:
            head = f.read(8)
        if head[4:8] == b"ftyp":  # an MP4/M4A/MOV whose index, written last by most recorders, never came
            raise AudioError("an MP4/M4A file without its index (moov box): it was cut short while being "
                             "recorded or copied, and nothing in it can be decoded") from e
        raise AudioError(
            "not a recognisable audio or video file (the data does not match any known format)"
        ) from e


def stream_audio(path: Path, piece_samples: int) -> Iterator[np.ndarray]:
    """Yield consecutive float32 pieces of `piece_samples` samples (the last may be shorter).

    Only one piece plus one decoded frame is held at a time, so memory does not grow with the
    length of the recording.
    """
    container = _open(path)
    with container:
        if not container.streams.audio:
            raise AudioError("the file has no audio track")
        stream = container.streams.audio[0]
        if not stream.codec_context.sample_rate or not stream.codec_context.channels:
            # Random bytes named .mp3 open as an mp3 stream with 0 Hz and 0 channels.
            raise AudioError("not a recognisable audio file (no sample rate or channels found)")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        pending: list[np.ndarray] = []
        pending_len = 0
        emitted = 0
        for frame in _frames(container, stream, path):
            for out in resampler.resample(frame):
                samples = out.to_ndarray().reshape(-1)
                pending.append(samples)
                pending_len += len(samples)
                while pending_len >= piece_samples:
                    joined = np.concatenate(pending)
                    yield joined[:piece_samples]
                    emitted += piece_samples
                    rest = joined[piece_samples:]
                    pending, pending_len = [rest], len(rest)
        for out in resampler.resample(None):
            pending.append(out.to_ndarray().reshape(-1))
        tail = np.concatenate(pending) if pending else np.empty(0, np.float32)
        if emitted == 0 and len(tail) == 0:
            raise AudioError("no audio could be decoded from the file; it may be corrupt")
        if len(tail):
            yield tail


def _frames(container: av.container.InputContainer, stream: av.AudioStream, path: Path) -> Iterator[av.AudioFrame]:
    """Decode packet by packet so one damaged packet costs that packet, not the recording.

    A read that fails (EIO, ENOTCONN, ESTALE, ETIMEDOUT: a share dropping halfway through a
    meeting) is the storage's, not the end of the audio: it is raised, and the worker tries the job
    again from its checkpoint. Only the data can end the audio early (a cut or damaged container)."""
    bad = 0
    decoded = 0
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.FFmpegError as e:
            if isinstance(e, OSError) and storage_trouble(e):
                raise
            # A truncated or damaged container: keep what decoded so far.
            logger.warning("{}: stopped reading at a damaged part ({})", path.name, e)
            break
        try:
            frames = packet.decode()
        except av.FFmpegError as e:
            bad += 1
            logger.debug("{}: skipping undecodable packet ({})", path.name, e)
            continue
        for frame in frames:
            decoded += 1
            yield frame
    if bad:
        logger.warning("{}: skipped {} damaged packet(s), kept {} good frame(s)", path.name, bad, decoded)


def probe_seconds(path: Path) -> float | None:
    """The container's idea of the duration, for progress and ETA before decoding finishes."""
    try:
        with _open(path) as container:
            if container.duration:
                return container.duration / av.time_base
    except AudioError:
        pass
    return None
