"""Subtitles: cue rules, word timing accuracy, and what word timing and cue shaping cost.

Our engine in one process, the model loaded once in the precision the worker would choose
(`auto`), default settings, on:

- synthetic meetings (tests.speech.meeting, `--minutes` each, seeds 0…): sentences synthesised
  separately and joined with known pauses, so every sentence's start is known;
- the real recordings of bench/realspeech.py (English and Mandarin).

For each transcript, the cues of the SRT (daemon.formats.cues.shape, default rules) are checked:

1. rule violations (daemon.formats.cues.violations, an independent checker): target 0;
2. cue starts at sentence boundaries (meetings): for each sentence whose first word begins a cue,
   |cue start − sentence start|; the median, target ≤ 0.2 s; and how many sentences begin a cue;
3. word times against openai-whisper's own `word_timestamps=True` (its transcribe(), fp32, beam 5,
   same weights) on the first meeting and the English clips: words matched in order by their
   normalised text; median |Δstart| and |Δend|, target ≤ 0.1 s;
4. cost: seconds in word timing (timing.word_times) and in shaping, over the rest of the
   transcription time of the same files in the same run: target ≤ 15%;
5. WER (English) and CER (Mandarin) of the SRT's text, and of the segments' text: shaping must not
   change them (bench/realspeech.py compares them with the openai-whisper CLI's).

    .venv/bin/python bench/subtitles.py [--model base] [--minutes 5] [--meetings 2]
"""

from __future__ import annotations

import argparse
import difflib
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import common
import whisper
from realspeech import clips
from whisper.normalizers import EnglishTextNormalizer

from daemon.engine import precision, timing
from daemon.engine.transcribe import DecodeSettings, Engine
from daemon.engine.weights import load_model
from daemon.formats import cues as shaping
from daemon.formats.cues import Cue
from daemon.transcript import Segment
from tests.speech import edit_distance, mandarin_characters, meeting

normalise = EnglishTextNormalizer()


class Clock:
    """Seconds spent in one function, summed over its calls."""

    def __init__(self, function: Callable[..., object]) -> None:
        self.function, self.seconds = function, 0.0

    def __call__(self, *args: object, **kwargs: object) -> object:
        began = time.perf_counter()
        try:
            return self.function(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - began


def transcribe(engine: Engine, path: Path) -> tuple[list[Segment], float]:
    began = time.perf_counter()
    segments = [s for w in engine.windows(path) for s in w.segments]
    return segments, time.perf_counter() - began


def cue_text(cues: list[Cue]) -> str:
    return " ".join(" ".join(cue.lines) for cue in cues)


def sentence_starts(cues: list[Cue], spans: list[tuple[float, float, str]]) -> tuple[list[float], int]:
    """Errors of the cue starts at sentence boundaries, and how many sentences begin a cue. Our
    words are matched to the reference words in order (difflib, normalised text)."""
    ours = [(word, i == 0, cue.start) for cue in cues for i, word in enumerate(cue.words)]
    said = [normalise(word.text) for word, _, _ in ours]
    reference, first_of = [], {}
    for k, (_, _, text) in enumerate(spans):
        first_of[len(reference)] = k
        reference.extend(normalise(w) for w in text.split())
    errors = []
    matcher = difflib.SequenceMatcher(a=reference, b=said, autojunk=False)
    for block in matcher.get_matching_blocks():
        for offset in range(block.size):
            k = first_of.get(block.a + offset)
            word, begins_cue, start = ours[block.b + offset]
            if k is not None and begins_cue:
                errors.append(abs(start - spans[k][0]))
    return errors, len(errors)


def word_offsets(ours: list[Segment], theirs: list[dict]) -> Iterator[tuple[float, float]]:
    """(|Δstart|, |Δend|) of each word both transcripts have, matched in order."""
    a = [w for s in ours for w in s.words]
    b = [w for s in theirs for w in s["words"]]
    matcher = difflib.SequenceMatcher(a=[normalise(w.text) for w in a], b=[normalise(w["word"]) for w in b],
                                      autojunk=False)
    for block in matcher.get_matching_blocks():
        for i in range(block.size):
            x, y = a[block.a + i], b[block.b + i]
            yield abs(x.start - y["start"]), abs(x.end - y["end"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="base")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--meetings", type=int, default=2)
    args = parser.parse_args()
    tmp = common.AUDIO_DIR / "subtitles"
    tmp.mkdir(parents=True, exist_ok=True)
    fp32, _ = load_model(args.model, common.MODEL_CACHE)
    precision.use_threads()
    chosen = precision.choose("auto", "cpu")
    model = precision.convert(load_model(args.model, common.MODEL_CACHE)[0], chosen)
    engine = Engine(model, DecodeSettings())
    aligning = timing.word_times = Clock(timing.word_times)  # type: ignore[assignment]  # the engine calls it here
    shaped = 0.0
    transcribing = 0.0
    violations: list[str] = []
    starts: list[float] = []
    sentences = begun = 0
    offsets: list[tuple[float, float]] = []
    rows = []

    def shape(segments: list[Segment]) -> list[Cue]:
        nonlocal shaped
        began = time.perf_counter()
        cues = shaping.shape(segments)
        shaped += time.perf_counter() - began
        return cues

    for seed in range(args.meetings):
        recording = meeting(args.minutes * 60, seed=seed)
        path = recording.write(tmp / f"meeting{seed}.wav")
        segments, seconds = transcribe(engine, path)
        transcribing += seconds
        cues = shape(segments)
        found = shaping.violations(cues, segments)
        violations += [f"meeting {seed}: {v}" for v in found]
        errors, count = sentence_starts(cues, recording.spans)
        starts += errors
        sentences += len(recording.spans)
        begun += count
        srt_wer = common.wer(recording.text, cue_text(cues))
        rows.append([f"meeting {seed} ({args.minutes:g} min)", len(cues), len(found),
                     f"{statistics.median(errors):.3f} s ({count}/{len(recording.spans)})" if errors else "-",
                     common.pct(srt_wer), common.pct(common.wer(recording.text, " ".join(s.text for s in segments)))])
        if seed == 0:
            theirs = whisper.transcribe(fp32, str(path), word_timestamps=True, beam_size=5, best_of=5, fp16=False,
                                        language="en" if fp32.is_multilingual else None)
            offsets += list(word_offsets(segments, theirs["segments"]))
        print(common.table(["file", "cues", "violations", "cue start error (median)", "WER SRT", "WER text"],
                           rows[-1:]), flush=True)

    for language in ("en", "zh"):
        recordings = clips(language)
        errors = reference = srt_errors = count = bad = 0
        for clip in recordings:
            truth = clip.with_suffix(".txt").read_text(encoding="utf-8").strip()
            segments, seconds = transcribe(engine, clip)
            transcribing += seconds
            cues = shape(segments)
            found = shaping.violations(cues, segments)
            violations += [f"{clip.name}: {v}" for v in found]
            bad += len(found)
            count += len(cues)
            if language == "en":
                ref = normalise(truth).split()
                errors += edit_distance(ref, normalise(" ".join(s.text for s in segments)).split())
                srt_errors += edit_distance(ref, normalise(cue_text(cues)).split())
                theirs = whisper.transcribe(fp32, str(clip), word_timestamps=True, beam_size=5, best_of=5,
                                            fp16=False, language="en" if fp32.is_multilingual else None)
                offsets += list(word_offsets(segments, theirs["segments"]))
            else:
                ref = mandarin_characters(truth)
                errors += edit_distance(ref, mandarin_characters(" ".join(s.text for s in segments)))
                srt_errors += edit_distance(ref, mandarin_characters(cue_text(cues)))
            reference += len(ref)
        rows.append([f"{language}: {len(recordings)} real clips", count, bad, "-", common.pct(srt_errors / reference),
                     common.pct(errors / reference)])
        print(common.table(["file", "cues", "violations", "cue start error (median)", "WER/CER SRT",
                            "WER/CER text"], rows[-1:]), flush=True)

    share = (aligning.seconds + shaped) / (transcribing - aligning.seconds)  # over transcribing without them
    start_offsets, end_offsets = [a for a, _ in offsets], [b for _, b in offsets]
    summary = {
        "model": args.model, "precision": chosen, "violations": len(violations), "violation_list": violations[:50],
        "cue_start_error_median": statistics.median(starts) if starts else None,
        "sentences": sentences, "sentences_beginning_a_cue": begun,
        "word_start_vs_whisper_median": statistics.median(start_offsets) if offsets else None,
        "word_end_vs_whisper_median": statistics.median(end_offsets) if offsets else None,
        "word_start_vs_whisper_p90": statistics.quantiles(start_offsets, n=10)[-1] if len(offsets) > 1 else None,
        "words_matched": len(offsets),
        "seconds_transcribing": round(transcribing, 1), "seconds_word_timing": round(aligning.seconds, 2),
        "seconds_shaping": round(shaped, 2), "cost_share": round(share, 4),
    }
    print(f"\nmodel {args.model}, {chosen} weights, CPU {common.cpu_model()}")
    print(common.table(["file", "cues", "violations", "cue start error (median)", "WER/CER SRT", "WER/CER text"],
                       rows))
    print(f"rule violations: {len(violations)}")
    for v in violations[:20]:
        print("  ", v)
    print(f"cue starts at sentence boundaries: median error {summary['cue_start_error_median']:.3f} s over "
          f"{begun} of {sentences} sentences (target ≤ 0.2 s)")
    print(f"word times against openai-whisper word_timestamps=True: median |Δstart| "
          f"{summary['word_start_vs_whisper_median']:.3f} s, |Δend| {summary['word_end_vs_whisper_median']:.3f} s over "
          f"{len(offsets)} words (target ≤ 0.1 s); 90th percentile |Δstart| {summary['word_start_vs_whisper_p90']:.3f} s")
    print(f"cost: word timing {aligning.seconds:.1f} s + shaping {shaped:.2f} s of {transcribing:.1f} s transcribing "
          f"= {share:.1%} (target ≤ 15%)")
    path = common.write_result("subtitles", {**summary, "rows": rows, "machine": common.machine()})
    print(f"wrote {path.relative_to(common.REPO)}")


if __name__ == "__main__":
    main()
