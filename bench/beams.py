"""What 5 beams cost against 2: our whole worker process on one recording, paired runs, one machine.

The default beam width is 5, as in the openai-whisper CLI and faster-whisper: with 2, base lost
words on real speech that 5 get right (bench/realspeech.py, bench/zh_prompt.py). This prints what
the wider beam costs on a synthetic meeting (espeak-ng, `common.recording`): `work
--exit-when-empty` with `beam_size` 2 and 5, run in alternating order so that a change of load on
the machine does not always hit the same side, model load included, language given. Ratios are 5
beams over 2, from the medians. Writes bench/out/beams.json.

    .venv/bin/python bench/beams.py [--minutes 5] [--models base] [--repeat 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import common
from common import Measurement, mb, pct

BEAMS = (2, 5)


def run_model(model: str, audio: Path, reference: str, repeat: int) -> dict[str, Any]:
    common.warm_file_cache(common.converted_checkpoint(model))
    common.warm_file_cache(audio)
    runs: dict[int, list[Measurement]] = {beam: [] for beam in BEAMS}
    texts: dict[int, str] = {}
    precisions: set[str] = set()
    for i in range(repeat):
        for beam in BEAMS if i % 2 == 0 else BEAMS[::-1]:
            with tempfile.TemporaryDirectory(prefix="bench-beams-") as tmp:
                run = common.daemon_transcribe_all([audio], model, Path(tmp), language="en",
                                                   settings={"WHISPER_DAEMON_BEAM_SIZE": str(beam)})[0]
                runs[beam].append(run.measurement)
                texts[beam] = common.srt_text(run.srt_path)
                precisions.add(run.precision)
            print(f"  {model} run {i + 1}/{repeat} beam {beam}: {run.measurement.wall_seconds:.1f} s, "
                  f"{run.precision}", flush=True)
    # `precision = auto` measures at start-up: a run that chose another format is not comparable
    result: dict[str, Any] = {"model": model, "precision": ",".join(sorted(precisions))}
    for beam in BEAMS:
        ms = runs[beam]
        result[f"beam{beam}"] = {
            "wall_seconds": statistics.median(m.wall_seconds for m in ms),
            "cpu_seconds": statistics.median(m.cpu_seconds for m in ms),
            "peak_rss_mb": statistics.median(m.peak_rss_mb for m in ms),
            "wer": common.wer(reference, texts[beam]), "runs": [m.summary() for m in ms]}
    for what in ("wall_seconds", "cpu_seconds", "peak_rss_mb"):
        result[f"{what}_ratio"] = result["beam5"][what] / result["beam2"][what]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--models", nargs="+", default=["base"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=2, help="runs per beam width; medians are reported")
    args = parser.parse_args()
    machine = common.machine()
    audio, reference = common.recording(args.minutes, args.seed)
    results = [run_model(model, audio, reference, args.repeat) for model in args.models]
    rows = []
    for r in results:
        for beam in BEAMS:
            s = r[f"beam{beam}"]
            rows.append([r["model"], r["precision"], beam, f"{s['wall_seconds']:.1f}", f"{s['cpu_seconds']:.1f}",
                         mb(s["peak_rss_mb"]), pct(s["wer"])])
        rows.append([r["model"], "", "5 / 2", f"{r['wall_seconds_ratio']:.2f}x", f"{r['cpu_seconds_ratio']:.2f}x",
                     f"{r['peak_rss_mb_ratio']:.2f}x", ""])
    print(f"\n{audio.name}, medians of {args.repeat} run(s) per beam width, {machine['cpu_model']}\n")
    print(common.table(["model", "precision", "beams", "wall s", "cpu s", "peak RSS MB", "WER"], rows))
    path = common.write_result("beams", {"params": vars(args), "machine": machine, "results": results})
    print(f"\nwrote {path.relative_to(common.REPO)}")


if __name__ == "__main__":
    main()
