"""End-to-end time: our `work --exit-when-empty` process vs openai-whisper's CLI, same file, same weights.

Both are whole processes timed from start to exit, model load included. The CLI runs at its own
defaults (beam 5, best_of 5, temperature fallback); ours at the daemon's defaults (beam 2 with
temperature fallback). Both are told the language is English, so neither pays for detection.

    .venv/bin/python bench/e2e_time.py [--minutes 5] [--models tiny.en base] [--repeat 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import common
from common import Measurement, mb, pct


def run_model(model: str, audio: Path, reference: str, repeat: int) -> dict[str, Any]:
    checkpoint = common.converted_checkpoint(model)  # converts once, before anything is timed
    common.warm_file_cache(checkpoint)
    common.warm_file_cache(audio)
    ours: list[Measurement] = []
    cli: list[Measurement] = []
    ours_text = cli_text = ""
    job: dict[str, Any] = {}
    for i in range(repeat):
        # Alternate the order, so a load change on the machine does not always hit the same side.
        order = ("ours", "cli") if i % 2 == 0 else ("cli", "ours")
        for side in order:
            with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
                if side == "ours":
                    run = common.daemon_transcribe(audio, model, Path(tmp), language="en")
                    ours.append(run.measurement)
                    ours_text, job = common.srt_text(run.srt_path), run.job
                else:
                    m, srt_path = common.whisper_cli(audio, checkpoint, Path(tmp))
                    cli.append(m)
                    cli_text = common.srt_text(srt_path)
            last = ours[-1] if side == "ours" else cli[-1]
            print(f"  {model} run {i + 1}/{repeat} {side}: {last.wall_seconds:.1f} s, "
                  f"{last.peak_rss_mb:.0f} MB")

    def median(ms: list[Measurement], attr: str) -> float:
        return statistics.median(getattr(m, attr) for m in ms)

    result: dict[str, Any] = {"model": model, "checkpoint": str(checkpoint), "audio_seconds": job["audio_seconds"]}
    for name, ms, text in (("ours", ours, ours_text), ("cli", cli, cli_text)):
        result[name] = {
            "wall_seconds": median(ms, "wall_seconds"), "cpu_seconds": median(ms, "cpu_seconds"),
            "peak_rss_mb": median(ms, "peak_rss_mb"), "wer": common.wer(reference, text),
            "runs": [m.summary() for m in ms],
        }
    result["time_ratio"] = result["ours"]["wall_seconds"] / result["cli"]["wall_seconds"]
    result["cpu_ratio"] = result["ours"]["cpu_seconds"] / result["cli"]["cpu_seconds"]
    result["rss_ratio"] = result["ours"]["peak_rss_mb"] / result["cli"]["peak_rss_mb"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="recording length (default 5)")
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", default=".m4a", help="container/codec by extension (default .m4a)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per side; medians are reported")
    args = parser.parse_args()

    machine = common.machine()
    audio, reference = common.recording(args.minutes, args.seed, args.format)
    results = [run_model(model, audio, reference, args.repeat) for model in args.models]

    rows = []
    for r in results:
        for side, label in (("ours", "ours (work --exit-when-empty)"), ("cli", "openai-whisper CLI")):
            s = r[side]
            rows.append([f"{r['model']}: {label}", f"{r['audio_seconds']:.0f}", f"{s['wall_seconds']:.1f}",
                         f"{s['cpu_seconds']:.1f}", f"{s['wall_seconds'] / r['audio_seconds']:.3f}",
                         mb(s["peak_rss_mb"]), pct(s["wer"])])
        rows.append([f"{r['model']}: ratio ours/CLI", "", f"{r['time_ratio']:.2f}x", f"{r['cpu_ratio']:.2f}x", "",
                     f"{r['rss_ratio']:.2f}x", ""])
    print(f"\nEnd-to-end, {audio.name} (whole processes, model load included; "
          f"medians of {args.repeat} run(s) per side)\n")
    print(common.table(["run", "audio s", "wall s", "cpu s", "wall/audio", "peak RSS MB", "WER"], rows))
    path = common.write_result("e2e_time", {
        "params": {"minutes": args.minutes, "seed": args.seed, "format": args.format, "repeat": args.repeat,
                   "audio": str(audio)},
        "machine": machine, "results": results,
    })
    print(f"\nwrote {path.relative_to(common.REPO)}")


if __name__ == "__main__":
    main()
