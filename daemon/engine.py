"""Chunked transcription: stream audio in pieces and run Whisper's seek loop over a sliding buffer.

This follows openai-whisper's `transcribe()` window by window (same decoding, temperature
fallback, prompt carrying and timestamp-based seeking), but never holds the whole recording or
its whole log-mel spectrogram: the buffer holds at most one window plus one decoded piece.
A sentence that runs over a window's end is dropped from that window and decoded whole at the
start of the next one, so nothing is cut or repeated at chunk boundaries.

The engine knows nothing about the queue: it maps a file (and a checkpoint) to windows of timed
segments, and the caller decides what to do between windows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import whisper
from whisper.audio import HOP_LENGTH, N_FRAMES, N_SAMPLES, log_mel_spectrogram, pad_or_trim
from whisper.decoding import DecodingOptions, DecodingResult
from whisper.tokenizer import Tokenizer, get_tokenizer

from daemon.audio import SAMPLE_RATE, stream_audio
from daemon.transcript import Checkpoint, Segment, Window

CHUNK_SECONDS = 30  # Whisper's own window; shorter chunks checkpoint more often but cost speed
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
COMPRESSION_RATIO_THRESHOLD = 2.4  # above: repetitive loop, retry hotter
LOGPROB_THRESHOLD = -1.0  # below: unsure, retry hotter
NO_SPEECH_THRESHOLD = 0.6  # above (and unsure): silence, emit nothing
PROMPT_RESET_TEMPERATURE = 0.5  # text decoded this hot is not trusted as context


@dataclass(frozen=True)
class DecodeSettings:
    language: str | None = None  # None: detect from the first window
    beam_size: int | None = None  # None: greedy
    best_of: int = 5  # samples per try when falling back to temperature > 0
    condition_on_previous_text: bool = True
    chunk_seconds: float = CHUNK_SECONDS


class Engine:
    def __init__(self, model: whisper.model.Whisper, settings: DecodeSettings = DecodeSettings()) -> None:
        self.model = model
        self.settings = settings
        self.window_samples = int(settings.chunk_seconds * SAMPLE_RATE)
        self.window_frames = self.window_samples // HOP_LENGTH
        self.input_stride = N_FRAMES // model.dims.n_audio_ctx  # mel frames per output token
        self.time_precision = self.input_stride * HOP_LENGTH / SAMPLE_RATE  # 0.02 s per token
        self.max_prompt = model.dims.n_text_ctx // 2 - 1  # what DecodingTask keeps of a prompt

    def windows(self, path: Path, start: Checkpoint = Checkpoint()) -> Iterator[Window]:
        """Decode `path` from `start`, one window at a time.

        Each window is a safe stopping point: resuming from its checkpoint gives the same output
        as never having stopped (sampling at temperature > 0 is seeded by the window position).
        """
        offset = round(start.offset_seconds * SAMPLE_RATE)
        prompt = list(start.prompt)
        language = start.language or self.settings.language
        tokenizer: Tokenizer | None = None
        pieces = stream_audio(path, self.window_samples)
        buffer = np.empty(0, np.float32)
        decoded = 0  # samples decoded from the start of the file
        exhausted = False
        while True:
            if not exhausted and len(buffer) < self.window_samples:
                piece = next(pieces, None)
                if piece is None:
                    exhausted = True
                    continue
                decoded += len(piece)
                # Resuming: skip what earlier runs finished (decoding is far cheaper than re-transcribing).
                keep = piece[max(0, len(piece) - (decoded - offset)):] if decoded > offset else piece[:0]
                buffer = np.concatenate([buffer, keep])
                continue
            content_frames = min(self.window_frames, len(buffer) // HOP_LENGTH)
            if content_frames == 0:
                return
            mel = log_mel_spectrogram(buffer[: self.window_samples], self.model.dims.n_mels, padding=N_SAMPLES)
            mel = pad_or_trim(mel[:, :content_frames], N_FRAMES).to(self.model.device)
            if tokenizer is None:
                language = language or self._detect_language(mel)
                tokenizer = get_tokenizer(self.model.is_multilingual, num_languages=self.model.num_languages,
                                          language=language, task="transcribe")
            torch.manual_seed(offset)
            result = self._decode_with_fallback(mel, prompt, language)
            segments, advance = self._segments(result, tokenizer, offset / SAMPLE_RATE, content_frames)
            kept = tuple(s for s in segments if s.text and s.end > s.start)
            if self.settings.condition_on_previous_text and result.temperature <= PROMPT_RESET_TEMPERATURE:
                prompt = (prompt + [t for s in kept for t in s.tokens])[-self.max_prompt:]
            else:
                prompt = []
            consumed = max(advance, 1) * HOP_LENGTH
            buffer = buffer[consumed:]
            offset += consumed
            yield Window(kept, Checkpoint(offset / SAMPLE_RATE, tuple(prompt), language), decoded / SAMPLE_RATE)

    def _detect_language(self, mel: torch.Tensor) -> str:
        if not self.model.is_multilingual:
            return "en"
        _, probs = self.model.detect_language(mel)
        return max(probs, key=probs.get)  # type: ignore[arg-type]

    def _decode_with_fallback(self, mel: torch.Tensor, prompt: list[int], language: str | None) -> DecodingResult:
        s = self.settings
        result: DecodingResult | None = None
        for t in TEMPERATURES:
            options = DecodingOptions(
                task="transcribe", language=language, temperature=t, fp16=False, prompt=prompt or None,
                beam_size=s.beam_size if t == 0 else None, best_of=s.best_of if t > 0 else None,
            )
            result = self.model.decode(mel, options)  # type: ignore[assignment]
            assert isinstance(result, DecodingResult)
            repetitive = result.compression_ratio > COMPRESSION_RATIO_THRESHOLD
            unsure = result.avg_logprob < LOGPROB_THRESHOLD
            silent = result.no_speech_prob > NO_SPEECH_THRESHOLD and unsure
            if silent or not (repetitive or unsure):
                break
        assert result is not None
        return result

    def _segments(
        self, result: DecodingResult, tokenizer: Tokenizer, window_start: float, content_frames: int
    ) -> tuple[list[Segment], int]:
        """Cut a window's tokens into timed segments; return them and how many mel frames to seek.

        An unfinished last segment is dropped and the window re-starts at its beginning, so a
        sentence that runs across the window edge is decoded whole in the next window.
        """
        if result.no_speech_prob > NO_SPEECH_THRESHOLD and result.avg_logprob <= LOGPROB_THRESHOLD:
            return [], content_frames
        tokens = result.tokens
        begin = tokenizer.timestamp_begin
        is_ts = [t >= begin for t in tokens]
        cuts = [i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]]
        single_ending = is_ts[-2:] == [False, True]
        content_end = window_start + content_frames * HOP_LENGTH / SAMPLE_RATE

        def segment(piece: list[int], start_pos: int, end_pos: int) -> Segment:
            # The model can stamp past the end of a short last window; no cue outlives the audio.
            text = tokenizer.decode([t for t in piece if t < tokenizer.eot])
            return Segment(min(window_start + start_pos * self.time_precision, content_end),
                           min(window_start + end_pos * self.time_precision, content_end),
                           text.strip(), tuple(piece))

        if not cuts:
            stamps = [t for t in tokens if t >= begin]
            duration_pos = (content_frames // self.input_stride if not stamps or stamps[-1] == begin
                            else stamps[-1] - begin)
            return [segment(tokens, 0, duration_pos)], content_frames
        if single_ending:
            cuts.append(len(tokens))
        segments = []
        last = 0
        for cut in cuts:
            piece = tokens[last:cut]
            segments.append(segment(piece, piece[0] - begin, piece[-1] - begin))
            last = cut
        if single_ending:
            return segments, content_frames
        return segments, (tokens[last - 1] - begin) * self.input_stride
