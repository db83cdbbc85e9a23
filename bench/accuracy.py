"""Accuracy: WER of our chunked worker vs openai-whisper's `model.transcribe()` on the same long file.

Same checkpoint, same decoding options (the daemon's defaults: 2 beams at temperature 0,
fallback 0.2…1.0 with best_of 5, thresholds 2.4 / -1.0 / 0.6, conditioning on previous text;
language "en" for .en models, detected otherwise). transcribe() runs in fp32, its only CPU format;
ours in the daemon's default precision (`auto`). Chunking must not cost accuracy: target is
ours at most 1.0 WER point worse than transcribe(). transcribe() runs in its own process
(`bench/_peer.py whisper`) so both wall times cover a whole process, model load included.

    .venv/bin/python bench/accuracy.py [--minutes 15] [--model tiny.en]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import common
from common import mb, pct

TARGET_POINTS = 1.0  # ours may be at most this many WER points (percent) worse


def transcribe_options() -> dict[str, Any]:
    """The daemon's default decoding, as keyword arguments of openai-whisper's transcribe()."""
    from daemon.config import Config
    from daemon.engine.transcribe import (
        COMPRESSION_RATIO_THRESHOLD,
        LOGPROB_THRESHOLD,
        NO_SPEECH_THRESHOLD,
        TEMPERATURES,
        DecodeSettings,  # imports torch
    )

    settings = DecodeSettings()
    return {"temperature": TEMPERATURES, "compression_ratio_threshold": COMPRESSION_RATIO_THRESHOLD,
            "logprob_threshold": LOGPROB_THRESHOLD, "no_speech_threshold": NO_SPEECH_THRESHOLD,
            "condition_on_previous_text": settings.condition_on_previous_text,
            "beam_size": Config.beam_size,  # at temperature 0
            "best_of": settings.best_of,  # samples per fallback temperature (transcribe() defaults to 1)
            "fp16": False}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", default=".m4a")
    parser.add_argument("--language", default=None, help='default: "en" for .en models, else detected')
    args = parser.parse_args()
    language = args.language or ("en" if args.model.endswith(".en") else None)

    machine = common.machine()
    audio, reference = common.recording(args.minutes, args.seed, args.format)
    checkpoint = common.converted_checkpoint(args.model)
    common.warm_file_cache(checkpoint)
    common.warm_file_cache(audio)

    with tempfile.TemporaryDirectory(prefix="bench-acc-") as tmp:
        run = common.daemon_transcribe(audio, args.model, Path(tmp), language=language)
        ours_text = common.srt_text(run.srt_path)
    print(f"  ours: {run.measurement.wall_seconds:.1f} s")
    options = transcribe_options()
    with tempfile.TemporaryDirectory(prefix="bench-acc-ref-") as tmp:
        cmd = [common.PYTHON, str(common.PEER), "whisper", str(checkpoint), tmp, str(audio),
               "--options", json.dumps(options), *(["--language", language] if language else [])]
        ref_m, srt_path = common.checked(common.measure(cmd, cwd=common.REPO), Path(tmp) / f"{audio.stem}.srt",
                                         "transcribe() run")
        ref_text = common.srt_text(srt_path)  # its segments' text, joined as our SRT's is
    print(f"  transcribe(): {ref_m.wall_seconds:.1f} s")

    ours_wer, ref_wer = common.wer(reference, ours_text), common.wer(reference, ref_text)
    points = (ours_wer - ref_wer) * 100
    verdict = "PASS" if points <= TARGET_POINTS else "FAIL"
    audio_s = run.job["audio_seconds"]
    rows = [
        ["ours (chunked worker)", pct(ours_wer), f"{run.measurement.wall_seconds:.1f}",
         f"{run.measurement.cpu_seconds:.1f}", mb(run.measurement.peak_rss_mb), len(ours_text.split())],
        ["openai-whisper transcribe()", pct(ref_wer), f"{ref_m.wall_seconds:.1f}", f"{ref_m.cpu_seconds:.1f}",
         mb(ref_m.peak_rss_mb), len(ref_text.split())],
    ]
    print(f"\nAccuracy, model {args.model}, {audio.name} ({audio_s:.0f} s, {len(reference.split())} reference "
          f"words, language {language or 'detected'})\n")
    print(common.table(["run", "WER", "wall s", "cpu s", "peak RSS MB", "words"], rows))
    print(f"\nours - transcribe() = {points:+.2f} WER points (target <= +{TARGET_POINTS:.1f}): {verdict}")
    print(f"wall time ratio ours/transcribe() = {run.measurement.wall_seconds / ref_m.wall_seconds:.2f}x")
    path = common.write_result("accuracy", {
        "params": {"minutes": args.minutes, "model": args.model, "seed": args.seed, "format": args.format,
                   "language": language, "audio": str(audio), "checkpoint": str(checkpoint),
                   "transcribe_options": options},
        "machine": machine, "target_points": TARGET_POINTS, "verdict": verdict, "audio_seconds": audio_s,
        "results": {
            "ours": {"wer": ours_wer, **run.measurement.summary()},
            "transcribe": {"wer": ref_wer, **ref_m.summary()},
            "difference_points": points,
            "time_ratio": run.measurement.wall_seconds / ref_m.wall_seconds,
        },
        "texts": {"reference": reference, "ours": ours_text, "transcribe": ref_text},
    })
    print(f"wrote {path.relative_to(common.REPO)}")


if __name__ == "__main__":
    main()
