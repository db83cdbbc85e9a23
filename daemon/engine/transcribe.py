"""Chunked transcription: Whisper's seek loop over a sliding buffer of the audio (feed.py).

This follows openai-whisper's `transcribe()` window by window (same decoding, temperature
fallback, prompt carrying and timestamp-based seeking), but never holds the whole recording or
its whole log-mel spectrogram: the buffer holds at most one window (one batch of them, with
`batch_size` > 1), a few seconds of look-ahead and one decoded piece. With VAD (vad.py) the model
hears only speech: a window starts where speech starts and ends where it ends, and long pauses
inside it are muted.
A sentence that runs over a window's end is dropped from that window and decoded whole at the
start of the next one, so nothing is cut or repeated at chunk boundaries.

The engine knows nothing about the queue: it maps a file (and a checkpoint) to windows of timed
segments, and the caller decides what to do between windows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import whisper
from whisper.audio import HOP_LENGTH, N_FRAMES, N_SAMPLES, log_mel_spectrogram, pad_or_trim
from whisper.decoding import DecodingResult
from whisper.tokenizer import Tokenizer, get_tokenizer

from daemon.config import ConfigError
from daemon.engine import chinese, chunking, precision, timing, vad
from daemon.engine.audio import SAMPLE_RATE
from daemon.engine.decoder import Decoder
from daemon.engine.feed import Feed
from daemon.engine.repeats import drop_repeats
from daemon.transcript import Checkpoint, Segment, Window, Word

CHUNK_SECONDS = 30  # Whisper's own window; shorter chunks checkpoint more often but cost speed
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
COMPRESSION_RATIO_THRESHOLD = 2.4  # above: repetitive loop, retry hotter
LOGPROB_THRESHOLD = -1.0  # below: unsure, retry hotter
NO_SPEECH_THRESHOLD = 0.6  # above (and unsure): silence, emit nothing
SNAP_SHARE = 0.25  # see _snap
PROMPT_RESET_TEMPERATURE = 0.5  # text decoded this hot is not trusted as context
PROMPT_LINE_SECONDS = 2.0  # the span the user's prompt is framed with (1–10 s gave the same text)
# Speech after a window's last timestamp that the model did not get to (see _unsaid): it follows a
# pause at least this long, and lasts at least as long as VAD's shortest speech.
UNSAID_GAP_SECONDS = 0.3
UNSAID_GAP_FRAMES = round(UNSAID_GAP_SECONDS * SAMPLE_RATE / HOP_LENGTH)
UNSAID_SPEECH_FRAMES = round(vad.MIN_SPEECH_SECONDS * SAMPLE_RATE / HOP_LENGTH)


@dataclass(frozen=True)
class DecodeSettings:
    language: str | None = None  # None: detect from the first window
    beam_size: int | None = 5  # None or 1: greedy
    best_of: int = 5  # samples per try when falling back to temperature > 0
    condition_on_previous_text: bool = True
    chunk_seconds: float = CHUNK_SECONDS
    batch_size: int = 1  # > 1: independent chunks cut at quiet points, decoded together
    task: str = "transcribe"  # or "translate": English text whatever the language (multilingual models)
    prompt: str = ""  # names, jargon, spellings: given to the model on every window
    chinese_script: str = "simplified"  # simplified | traditional | as-is, for Chinese transcripts
    vad: bool = True  # give the model only the audio around speech (Silero VAD)
    vad_threshold: float = 0.5  # speech probability above which a frame is speech


def _worth_keeping(segment: Segment) -> bool:
    """Text in a real time span. Whisper answers faint noise with lone '.' or '...': no words, no cue."""
    return segment.end > segment.start and any(c.isalnum() for c in segment.text)


def _snap(segments: list[Segment], keep: np.ndarray | None, start: int, offset: int) -> list[Segment]:
    """Segments stamped across a muted pause moved, with their words, to the speech they hold: over
    silence Whisper tends to start a line where the last one ended. A stretch of speech holding
    less than a SNAP_SHARE of a segment's speech (the tail of the sentence before) is not its speech.
    `keep`: the buffer's speech frames; the segments were decoded from frame `start` of the buffer,
    which begins at sample `offset`."""
    if keep is None:
        return segments
    frames_per_second = SAMPLE_RATE / HOP_LENGTH
    at = offset // HOP_LENGTH  # the buffer's first frame, counted from the start of the recording
    runs = vad.runs(keep)
    snapped = []
    for seg in segments:
        first, last = round(seg.start * frames_per_second) - at, round(seg.end * frames_per_second) - at
        held = [(max(a, first, start), min(b, last)) for a, b in runs if min(b, last) > max(a, first, start)]
        total = sum(b - a for a, b in held)
        held = [(a, b) for a, b in held if b - a >= SNAP_SHARE * total]
        if held:
            start_s, end_s = (at + held[0][0]) / frames_per_second, (at + held[-1][1]) / frames_per_second
            words = tuple(replace(w, start=min(max(w.start, start_s), end_s), end=min(max(w.end, start_s), end_s))
                          for w in seg.words)
            seg = replace(seg, start=start_s, end=end_s, words=words)
        snapped.append(seg)
    return snapped


class Engine:
    def __init__(self, model: whisper.model.Whisper, settings: DecodeSettings = DecodeSettings()) -> None:
        self.model = model
        self.settings = settings
        self.window_samples = int(settings.chunk_seconds * SAMPLE_RATE)
        self.window_frames = self.window_samples // HOP_LENGTH
        self.input_stride = N_FRAMES // model.dims.n_audio_ctx  # mel frames per output token
        self.time_precision = self.input_stride * HOP_LENGTH / SAMPLE_RATE  # 0.02 s per token
        self.max_prompt = model.dims.n_text_ctx // 2 - 1  # what whisper keeps of a prompt
        self._decoders: dict[tuple[str | None, str], Decoder] = {}
        self._detector: vad.SpeechDetector | None = None
        self.check(settings)

    def windows(self, path: Path, start: Checkpoint = Checkpoint()) -> Iterator[Window]:
        """Decode `path` from `start`, one window (or one batch of chunks) at a time.

        Each window is a safe stopping point: resuming from its checkpoint gives the same output
        as never having stopped (sampling at temperature > 0 is seeded by the audio position).
        """
        self.check(self.settings)  # they may have been replaced for this job
        return self._seek(path, start, self.settings.batch_size)

    def check(self, settings: DecodeSettings) -> None:
        """Settings this model cannot follow fail here, before any audio is read, saying what to change.
        (Values that are wrong for any model are config.validate's business.)"""
        if settings.task == "translate" and not self.model.is_multilingual:
            raise ConfigError('task = "translate" needs a multilingual model, and this one is English-only (a .en '
                              'model): choose one without .en (e.g. base), or set task = "transcribe"')
        tokenizer = get_tokenizer(self.model.is_multilingual, num_languages=self.model.num_languages)
        length = len(tokenizer.encode(" " + settings.prompt.strip()))
        if length > self.max_prompt // 2:
            raise ConfigError(f"the prompt is {length} tokens long; at most {self.max_prompt // 2} fit, leaving room "
                              "for the text carried from window to window. Keep it to names and terms.")

    def _seek(self, path: Path, start: Checkpoint, batch: int) -> Iterator[Window]:
        """Whisper's seek loop, decoding up to `batch` windows at once; one pass of it per Window.

        One window (batch 1) is whisper's own loop: a window starts where speech does, and the next
        one where the last complete segment of this one ended. Several windows are chunks cut at
        quiet points (_spans): independent of each other, which is what lets them share a batch;
        each is decoded to its end, seeking inside it the same way, before the pass ends. A window
        with no sound at all is not decoded.
        """
        offset = round(start.offset_seconds * SAMPLE_RATE)  # the buffer's start in the file
        prompt = list(start.prompt)
        language = start.language or self.settings.language
        decoder: Decoder | None = None
        fixed: list[int] = []
        feed = self._feed(path, offset)
        while True:
            spans = self._spans(feed, batch)  # in 10 ms frames from the buffer's start
            if not spans:
                return
            keep = feed.speech()
            voiced = [v for a, b in spans if (v := feed.voiced(keep, a, b))[0] < v[1]]
            seek = spans[-1][1]  # where the next pass starts
            if batch == 1 and voiced and voiced[0][0] > 0:
                # Silence and non-speech before the speech cost nothing: no model time, and nothing
                # for the model to hallucinate over. The window starts where speech does.
                seek, voiced = voiced[0][0], []
            segments: list[Segment] = []
            temperature: float | None = None  # of the one window decoded (batch 1)
            model_frames = 0
            while voiced:
                model_frames += sum(b - a for a, b in voiced)
                mels = [self._mel(feed.muted(keep, a, b), b - a) for a, b in voiced]
                encoding = self._encode(torch.stack(mels))
                if decoder is None:
                    language = language or self._detect_language(encoding[0])  # read from the same encoding
                    decoder = self._decoder(language)
                    fixed = self._fixed_prompt(decoder.tokenizer)
                encoded, results = self._decode(decoder, encoding, [offset + a * HOP_LENGTH for a, _ in voiced],
                                                self._prompt(fixed, prompt))
                rest: list[tuple[int, int]] = []
                for (a, b), features, result in zip(voiced, encoded, results, strict=True):
                    found, advance = self._cut(decoder, features, result, (offset + a * HOP_LENGTH) / SAMPLE_RATE,
                                               b - a, feed.onset(a, b))
                    segments.extend(s for s in _snap(found, keep, a, offset) if _worth_keeping(s))
                    if batch == 1:  # the next window starts where this one stopped (a == 0)
                        seek = max(self._unsaid(feed, keep, found, offset, advance, b), 1)
                        temperature = result.temperature
                    else:
                        # Whisper stopped early or left a sentence unfinished: decode the rest of
                        # the chunk again, from its last timestamp, as whisper's own seek loop would.
                        first, last = feed.voiced(keep, a + max(advance, 1), b)
                        if first < last:
                            rest.append((first, last))
                voiced = rest
            segments.sort(key=lambda seg: seg.start)
            kept, looped = drop_repeats(self._lines(prompt, decoder.tokenizer) if decoder else [], segments)
            prompt = self._carry(prompt, kept, looped, batch, temperature)
            consumed = seek * HOP_LENGTH
            speech = feed.probs[:seek].astype("<f4").tobytes() if feed.detector is not None else None
            feed.drop(consumed)
            offset += consumed
            yield Window(kept, Checkpoint(offset / SAMPLE_RATE, tuple(prompt), language), feed.seconds,
                         model_seconds=model_frames * HOP_LENGTH / SAMPLE_RATE, speech=speech)

    def _spans(self, feed: Feed, batch: int) -> list[tuple[int, int]]:
        """The windows of the next pass, in 10 ms frames from the buffer's start; none at the end of
        the file. One window is the next `chunk_seconds`, read with VAD's look-ahead; several are
        cut at quiet points (chunking.py), read with one window of look-ahead for the cut."""
        if batch == 1:
            feed.fill(self.window_samples + vad.LOOKAHEAD_SAMPLES)
            frames = min(self.window_frames, len(feed.audio) // HOP_LENGTH)
            return [(0, frames)] if frames else []
        feed.fill((batch + 1) * self.window_samples)
        spans = [(a // HOP_LENGTH, b // HOP_LENGTH)
                 for a, b in chunking.plan(feed.audio, self.window_samples, feed.exhausted, batch)]
        return [(a, b) for a, b in spans if b > a]

    def _carry(self, carried: list[int], kept: tuple[Segment, ...], looped: bool, batch: int,
               temperature: float | None) -> list[int]:
        """The text the next pass is prompted with, after one that kept `kept` (`temperature`: of
        its one window, None when it decoded none or several)."""
        if looped:
            return []  # the carried text feeds the loop
        condition = self.settings.condition_on_previous_text
        new = [t for seg in kept for t in seg.tokens]
        if batch > 1:
            # Chunks do not follow each other's text: they all get the last batch's, if it had any.
            return new[-self.max_prompt:] if kept and condition else carried
        if temperature is None:  # nothing decoded
            return carried
        # Whisper's own rule: the text goes on, unless it was decoded too hot to be trusted.
        return (carried + new)[-self.max_prompt:] if condition and temperature <= PROMPT_RESET_TEMPERATURE else []

    def _feed(self, path: Path, offset: int) -> Feed:
        if self.settings.vad and self._detector is None:
            self._detector = vad.SpeechDetector()
        return Feed(path, self.window_samples, offset, self._detector if self.settings.vad else None,
                    self.settings.vad_threshold)

    def _unsaid(self, feed: Feed, keep: np.ndarray | None, segments: list[Segment], offset: int, advance: int,
                content_frames: int) -> int:
        """Where to seek after a window: `advance`, unless the model ended it with a lone timestamp
        (Whisper then skips the rest of the window) that falls in a pause, and VAD hears speech after
        that pause: then from that timestamp, so that a last sentence the model did not get to is
        decoded in the next window instead of lost. A timestamp inside speech is the model's own
        sentence running on past an early stamp: decoding from there would write its end twice."""
        if keep is None or not segments or advance < content_frames:
            return advance
        said = round((segments[-1].end - offset / SAMPLE_RATE) * SAMPLE_RATE / HOP_LENGTH)
        if said <= 0:
            return advance
        heard = feed.probs[said:content_frames] >= self.settings.vad_threshold
        if heard[:UNSAID_GAP_FRAMES].any():
            return advance
        return said if heard.sum() >= UNSAID_SPEECH_FRAMES else advance

    def _decode(self, decoder: Decoder, features: torch.Tensor, positions: list[int],
                prompt: list[int]) -> tuple[list[torch.Tensor], list[DecodingResult]]:
        """The whole batch of encoded windows at the first temperature; windows that fail the
        quality checks retry alone, hotter, seeded by their `positions` in the file. Returns each
        window's encoding and result."""
        results = decoder.run(features, prompt, TEMPERATURES[0], self.settings.beam_size)
        # A batch of one is its window's encoding: the decoder keeps the audio's keys and values
        # it computed for it for the retries, the punctuation pass and word timing.
        encoded = [features] if len(features) == 1 else list(features.split(1))
        for i, result in enumerate(results):
            if self._needs_fallback(result):
                torch.manual_seed(positions[i])
                results[i] = self._retry_hotter(decoder, encoded[i], prompt)
        return encoded, results

    def _encode(self, mels: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.encoder(mels.to(self.model.encoder.conv1.weight.dtype))

    def _mel(self, audio: np.ndarray, content_frames: int) -> torch.Tensor:
        mel = log_mel_spectrogram(audio, self.model.dims.n_mels, padding=N_SAMPLES)
        return pad_or_trim(mel[:, :content_frames], N_FRAMES).to(self.model.device)

    def _decoder(self, language: str | None) -> Decoder:
        key = (language, self.settings.task)
        if key not in self._decoders:  # building one costs ~0.3 s (tokenizer tables)
            tokenizer = get_tokenizer(self.model.is_multilingual, num_languages=self.model.num_languages,
                                      language=language, task=self.settings.task)
            self._decoders[key] = Decoder(self.model, tokenizer, precision.text_decoder(self.model, language))
        return self._decoders[key]

    def _script(self, tokenizer: Tokenizer) -> str:
        """The script to write: the chosen one for Chinese transcripts, the model's own for anything else."""
        if tokenizer.language == chinese.CHINESE and tokenizer.task == "transcribe":
            return self.settings.chinese_script
        return "as-is"

    def _fixed_prompt(self, tokenizer: Tokenizer) -> list[int]:
        """The part of every window's prompt that never changes: the user's prompt, in the chosen
        script, framed as one timed line, as the text carried from window to window is. Given as
        bare text (whisper's initial_prompt), it made 5-beam search drop the timestamps of the first
        window: one 30 s cue (tests/test_prompt.py)."""
        text = chinese.convert(self.settings.prompt.strip(), self._script(tokenizer))
        if not text:
            return []
        end = tokenizer.timestamp_begin + round(PROMPT_LINE_SECONDS / self.time_precision)
        return [tokenizer.timestamp_begin, *tokenizer.encode(" " + text), end]

    def _cut(self, decoder: Decoder, features: torch.Tensor, result: DecodingResult, window_start: float,
             content_frames: int, onset: float) -> tuple[list[Segment], int]:
        """A window's segments with their words, and how many mel frames to seek (see _pieces).

        A language with a style sample (Mandarin) gets its punctuation from a second pass over the
        same tokens, prompted with the sample, that only adds marks: a style prompt in the decoding
        itself changes the words (docs/benchmarks.md, Real speech). The words are timed on the text as shown
        (timing.py); the segments' tokens, carried as the next prompt, stay the decoding's own."""
        t = decoder.tokenizer
        pieces, advance = self._pieces(result, t, content_frames)
        if not pieces:
            return [], advance
        script = self._script(t)
        shown = [piece for piece, _, _ in pieces]
        style = chinese.language_prompt(script)
        if style:
            marks = [t.encode(mark) for mark in chinese.MARKS]
            marked = decoder.punctuate(features, t.encode(" " + style), result.tokens, marks)
            shown = [piece for piece, _, _ in self._pieces(replace(result, tokens=marked), t, content_frames)[0]]

        def show(text: str) -> str:
            text = chinese.convert(text, script)
            return chinese.full_width(text) if style else text

        # What follows the seek point is the next window's: no word of this one ends past it (the
        # alignment can stretch a last word there), nor past the audio (the model can stamp past
        # the end of a short last window).
        window_end = window_start + min(advance, content_frames) * HOP_LENGTH / SAMPLE_RATE

        def at(seconds: float) -> float:
            return min(window_start + seconds, window_end)

        timed = timing.word_times(decoder, features, [[x for x in piece if x < t.eot] for piece in shown],
                                  content_frames, [(a * self.time_precision, b * self.time_precision)
                                                   for _, a, b in pieces], onset)
        segments = []
        for (piece, _, _), shown_piece, (words, start, end) in zip(pieces, shown, timed, strict=True):
            texts = _shown_words([w.word for w in words], show)
            text = "".join(texts) if words else show(t.decode([x for x in shown_piece if x < t.eot]))
            raw = t.decode([x for x in piece if x < t.eot])
            if (converted := chinese.convert(raw, script)) != raw:
                # Carry the converted text: a prompt in the chosen script keeps the model writing it.
                head = piece[:1] if piece[0] >= t.timestamp_begin else []
                tail = piece[-1:] if len(piece) > 1 and piece[-1] >= t.timestamp_begin else []
                piece = [*head, *t.encode(converted), *tail]
            segments.append(Segment(at(start), at(end), text.strip(), tuple(piece),
                                    tuple(Word(at(w.start), at(w.end), shown_text, w.probability)
                                          for w, shown_text in zip(words, texts))))
        return segments, advance

    def _prompt(self, fixed: list[int], carried: list[int]) -> list[int]:
        """A window's prompt: the fixed part whole, then as much of the carried text as fits after it
        (whisper's carry_initial_prompt). The checkpoint holds only the carried text."""
        room = self.max_prompt - len(fixed)
        return fixed + carried[max(0, len(carried) - room):]

    @staticmethod
    def _lines(carried: list[int], tokenizer: Tokenizer) -> list[str]:
        """The lines of the carried text, oldest first: the text between its timestamp tokens."""
        lines: list[list[int]] = [[]]
        for token in carried:
            if token >= tokenizer.timestamp_begin:
                if lines[-1]:
                    lines.append([])
            else:
                lines[-1].append(token)
        return [tokenizer.decode(line) for line in lines if line]

    def _detect_language(self, features: torch.Tensor) -> str:
        """The language most likely spoken in a window, from its encoding (whisper skips its encoder then)."""
        if not self.model.is_multilingual:
            return "en"
        _, probs = self.model.detect_language(features)
        return max(probs, key=probs.get)  # type: ignore[arg-type]

    @staticmethod
    def _needs_fallback(result: DecodingResult) -> bool:
        repetitive = result.compression_ratio > COMPRESSION_RATIO_THRESHOLD
        unsure = result.avg_logprob < LOGPROB_THRESHOLD
        silent = result.no_speech_prob > NO_SPEECH_THRESHOLD and unsure
        return not silent and (repetitive or unsure)

    def _retry_hotter(self, decoder: Decoder, features: torch.Tensor, prompt: list[int]) -> DecodingResult:
        """Whisper's temperature fallback for one encoded window (`features`) that failed the quality
        checks at the first temperature: the best of `best_of` samples at each next temperature,
        until one passes them (the hottest one's otherwise)."""
        result: DecodingResult | None = None
        for t in TEMPERATURES[1:]:
            # The samples one after another, not as one batch of five: a hard window must not
            # need five decoders' memory at once, or peak memory would grow with the recording.
            tries = [decoder.run(features, prompt, t)[0] for _ in range(self.settings.best_of)]
            result = max(tries, key=lambda r: r.avg_logprob)
            if not self._needs_fallback(result):
                break
        assert result is not None
        return result

    def _pieces(self, result: DecodingResult, tokenizer: Tokenizer,
                content_frames: int) -> tuple[list[tuple[list[int], int, int]], int]:
        """Cut a window's tokens into its segments' tokens, each with its start and end in audio
        positions (20 ms) from the window's start; return them and how many mel frames to seek.

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
        if not cuts:
            stamps = [t for t in tokens if t >= begin]
            duration = (content_frames // self.input_stride if not stamps or stamps[-1] == begin
                        else stamps[-1] - begin)
            return [(list(tokens), 0, duration)], content_frames
        if single_ending:
            cuts.append(len(tokens))
        pieces = []
        last = 0
        for cut in cuts:
            piece = list(tokens[last:cut])
            pieces.append((piece, piece[0] - begin, piece[-1] - begin))
            last = cut
        if single_ending:
            return pieces, content_frames
        return pieces, (tokens[last - 1] - begin) * self.input_stride


def _shown_words(words: list[str], show: Callable[[str], str]) -> list[str]:
    """The words as the transcript shows them, after `show` (script conversion, full-width marks).
    Converted together, so that OpenCC sees whole phrases; split again where the words were, when
    the conversion kept the length (character for character, as OpenCC's tables almost always do)."""
    joined = "".join(words)
    converted = show(joined)
    if len(converted) != len(joined):
        return [show(word) for word in words]
    ends = np.cumsum([len(word) for word in words])
    return [converted[a:b] for a, b in zip([0, *ends[:-1]], ends)]
