"""Flat memory: peak RSS of `work --exit-when-empty` on a long recording vs a short one.

Same model, same kind of process, same run; the daemon streams audio in 30 s pieces, so the long
file should cost (almost) no more memory than the short one: target long/short <= 1.10.
openai-whisper's CLI, which decodes the whole file and its whole spectrogram up front, is run on
the same two files for comparison (--skip-cli skips it: on 60 minutes it takes a long while).

With `--speakers auto` (the daemon's default) the worker also labels speakers, whose pass streams
the file again: the ratio holds with it on.

    .venv/bin/python bench/memory_flat.py [--long-minutes 60] [--short-minutes 5] [--model tiny.en] [--skip-cli]
                                          [--speakers auto|off]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import common
from common import mb

TARGET = 1.10


def word_ratio(reference: str, text: str) -> float:
    # A cheap sanity check that the whole file was transcribed (WER on an hour of text is an
    # O(n^2) pure-Python alignment: minutes of CPU for a figure this benchmark does not need).
    return len(text.split()) / max(1, len(reference.split()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--long-minutes", type=float, default=60.0)
    parser.add_argument("--short-minutes", type=float, default=5.0)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", default=".m4a")
    parser.add_argument("--skip-cli", action="store_true", help="do not run openai-whisper's CLI for comparison")
    parser.add_argument("--speakers", default="auto", help="the worker's speakers setting")
    args = parser.parse_args()

    machine = common.machine()
    files = {label: common.recording(minutes, args.seed, args.format)
             for label, minutes in (("short", args.short_minutes), ("long", args.long_minutes))}
    checkpoint = common.converted_checkpoint(args.model)  # converted before anything is measured
    common.warm_file_cache(checkpoint)
    language = "en" if args.model.endswith(".en") else None

    results: dict[str, dict[str, Any]] = {"ours": {}}
    for label, (audio, reference) in files.items():
        with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
            (run,) = common.daemon_transcribe_all([audio], args.model, Path(tmp), language,
                                                  {"WHISPER_DAEMON_SPEAKERS": args.speakers})
            text = common.srt_text(run.srt_path)
        results["ours"][label] = {"audio": str(audio), "audio_seconds": run.job["audio_seconds"],
                                  "words_vs_reference": word_ratio(reference, text), **run.measurement.summary()}
        print(f"  ours {label}: {run.measurement.peak_rss_mb:.0f} MB, {run.measurement.wall_seconds:.1f} s")
    if not args.skip_cli:
        results["cli"] = {}
        for label, (audio, reference) in files.items():
            with tempfile.TemporaryDirectory(prefix="bench-mem-cli-") as tmp:
                m, srt_path = common.whisper_cli(audio, checkpoint, Path(tmp))
                text = common.srt_text(srt_path)
            results["cli"][label] = {"audio": str(audio), "audio_seconds": common.audio_seconds(audio),
                                     "words_vs_reference": word_ratio(reference, text), **m.summary()}
            print(f"  cli {label}: {m.peak_rss_mb:.0f} MB, {m.wall_seconds:.1f} s")

    rows = []
    for side, name in (("ours", "ours (work --exit-when-empty)"), ("cli", "openai-whisper CLI")):
        if side not in results:
            continue
        r = results[side]
        r["ratio_long_short"] = r["long"]["peak_rss_mb"] / r["short"]["peak_rss_mb"]
        for label in ("short", "long"):
            x = r[label]
            rows.append([f"{name}: {label}", f"{x['audio_seconds']:.0f}", f"{x['wall_seconds']:.1f}",
                         mb(x["sampled_rss_mb"]), mb(x["ru_maxrss_mb"]), mb(x["peak_rss_mb"]),
                         f"{x['words_vs_reference']:.2f}"])
        rows.append([f"{name}: ratio long/short", "", "", "", "", f"{r['ratio_long_short']:.3f}x", ""])
    ours_ratio = results["ours"]["ratio_long_short"]
    verdict = "PASS" if ours_ratio <= TARGET else "FAIL"

    print(f"\nPeak RSS, model {args.model}, speakers {args.speakers}, {args.long_minutes:g} min vs "
          f"{args.short_minutes:g} min (whole processes, model load included)\n")
    print(common.table(["run", "audio s", "wall s", "sampled MB", "ru_maxrss MB", "peak MB", "words/ref"], rows))
    print(f"\nours long/short = {ours_ratio:.3f} (target <= {TARGET:.2f}): {verdict}")
    if "cli" in results:
        print(f"openai-whisper CLI long/short = {results['cli']['ratio_long_short']:.3f}")
    path = common.write_result("memory_flat", {
        "params": {"long_minutes": args.long_minutes, "short_minutes": args.short_minutes, "model": args.model,
                   "speakers": args.speakers,
                   "seed": args.seed, "format": args.format, "skip_cli": args.skip_cli, "checkpoint": str(checkpoint)},
        "machine": machine, "target": TARGET, "verdict": verdict, "results": results,
    })
    print(f"wrote {path.relative_to(common.REPO)}")


if __name__ == "__main__":
    main()
