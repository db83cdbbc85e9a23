"""Speaker labels (issue 23): accuracy on the development set, cost on the 5-minute meeting.

Accuracy: the conversations ../shared/speakers/build.py makes (2, 3 and 4 real people, English and
Mandarin, and one voice alone) go through `work --exit-when-empty` with `speakers = auto`; each RTTM
the daemon writes is scored against the set's reference with pyannote.metrics (DER, collar 0.25 s),
the number of speakers is checked, and every word of the JSON is given the speaker of the clip it
lies in. The same files again with `speakers = off`: the words must not change (same WER).
Cost: the 5-minute meeting of bench/ (four espeak-ng voices) with speakers off and auto, in the same
run: the speaker pass's seconds (the worker logs them) against the transcription's, and the peak RSS.
Overlap (--overlap): a real two-person conversation in which people talk over each other, the
30-second sample with its reference RTTM that pyannote.audio's wheel carries (MIT; fetched from
PyPI into bench/out, never committed): DER with and without the overlapped stretches scored.

    .venv/bin/python -m pip install pyannote.metrics==4.2.0   # (bench/requirements.txt)
    .venv/bin/python bench/speakers.py [--model base] [--skip-cost] [--overlap]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import common
from common import mb, pct
from pyannote.core import Annotation, Segment
from pyannote.metrics.diarization import DiarizationErrorRate

# ../shared/speakers beside the project (/work/main), or two levels up from a worktree (/work/wt/x)
BUILD = next((p for p in (common.REPO.parent / "shared" / "speakers" / "build.py",
                          common.REPO.parent.parent / "shared" / "speakers" / "build.py") if p.is_file()),
             common.REPO.parent / "shared" / "speakers" / "build.py")
SET = common.OUT / "speakers"
FORMATS = "json,rttm,srt,txt"
SAMPLE_WHEEL = "pyannote.audio==3.3.2"  # its wheel carries sample.wav and sample.rttm
TARGETS = {"der": 0.10, "words": 0.95, "time_share": 0.15, "rss_mb": 250.0}


def dev_set() -> list[Path]:
    if not (SET / "dev_one_en.wav").exists():
        subprocess.run([common.PYTHON, str(BUILD), str(SET)], check=True)
    return sorted(SET.glob("dev_*.wav"))


def rttm(text: str) -> Annotation:
    turns = Annotation()
    for line in text.splitlines():
        f = line.split()
        turns[Segment(float(f[3]), float(f[3]) + float(f[4]))] = f[7]
    return turns


def words_right(reference: Annotation, document: dict[str, Any]) -> tuple[int, int]:
    """Words whose speaker is the reference's at the word's middle (or nearest turn), after mapping
    each label to the reference speaker it shares most words with."""
    pairs = []
    for seg in document["segments"]:
        for w in seg["words"]:
            t = (w["start"] + w["end"]) / 2
            nearest = min(reference.itertracks(yield_label=True),
                          key=lambda x: 0.0 if x[0].start <= t <= x[0].end else min(abs(t - x[0].start),
                                                                                     abs(t - x[0].end)))
            pairs.append((w.get("speaker"), nearest[2]))
    mapping: dict[Any, str] = {}
    for label in {p[0] for p in pairs}:
        named = [ref for hyp, ref in pairs if hyp == label]
        mapping[label] = max(set(named), key=named.count)
    return sum(mapping[hyp] == ref for hyp, ref in pairs), len(pairs)


def accuracy(model: str) -> dict[str, Any]:
    files = dev_set()
    runs = {}
    for setting in ("auto", "off"):
        with tempfile.TemporaryDirectory(prefix="bench-spk-") as tmp:
            done = common.daemon_transcribe_all(files, model, Path(tmp), settings={
                "WHISPER_DAEMON_SPEAKERS": setting, "WHISPER_DAEMON_FORMATS": FORMATS})
            runs[setting] = {f.stem: {fmt: Path(p).read_text(encoding="utf-8") for p in run.job["outputs"]
                                      for fmt in [Path(p).suffix[1:]]} for f, run in zip(files, done)}
            runs[setting]["_seconds"] = done[0].measurement.wall_seconds
    metric = DiarizationErrorRate(collar=0.25)
    rows, per_file = [], {}
    for f in files:
        reference = rttm(f.with_suffix(".rttm").read_text())
        out = runs["auto"][f.stem]
        document = json.loads(out["json"])
        found = len(document.get("speakers", [])) or 1
        truth = len(reference.labels())
        der = metric(reference, rttm(out["rttm"]))
        right, total = words_right(reference, document)
        words_on = [w["word"] for s in document["segments"] for w in s["words"]]
        words_off = [w["word"] for s in json.loads(runs["off"][f.stem]["json"])["segments"] for w in s["words"]]
        reference_text = f.with_suffix(".txt").read_text(encoding="utf-8")
        hyp_on, hyp_off = (" ".join(ws) for ws in (words_on, words_off))
        score = common.wer if "_zh" not in f.stem else _cer
        per_file[f.stem] = {"der": der, "speakers": found, "reference_speakers": truth, "words_right": right,
                            "words": total, "labels": bool(document.get("speakers")),
                            "same_words": words_on == words_off,
                            "error_rate_on": score(reference_text, hyp_on), "error_rate_off": score(reference_text, hyp_off)}
        rows.append([f.stem, truth, found, pct(der), f"{right}/{total} ({pct(right / max(total, 1))})",
                     "yes" if document.get("speakers") else "no", words_on == words_off,
                     f"{score(reference_text, hyp_on):.3f} / {score(reference_text, hyp_off):.3f}"])
    total_der = abs(metric)
    print(common.table(["file", "people", "found", "DER", "words right", "labels", "same words",
                        "WER/CER on / off"], rows))
    right = sum(v["words_right"] for k, v in per_file.items() if v["reference_speakers"] > 1)
    total = sum(v["words"] for k, v in per_file.items() if v["reference_speakers"] > 1)
    print(f"DER over the set (pyannote.metrics, collar 0.25 s): {pct(total_der)} (target <= {pct(TARGETS['der'])}); "
          f"words right (conversations): {pct(right / total)} (target >= {pct(TARGETS['words'])})")
    return {"files": per_file, "der": total_der, "words_right": right / total}


def overlap(model: str) -> dict[str, Any]:
    sample = common.OUT / "pyannote-sample"
    if not (sample / "sample.rttm").exists():
        with tempfile.TemporaryDirectory(prefix="bench-spk-wheel-") as tmp:
            subprocess.run([common.PYTHON, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, SAMPLE_WHEEL],
                           check=True)
            with zipfile.ZipFile(next(Path(tmp).glob("*.whl"))) as wheel:
                sample.mkdir(parents=True, exist_ok=True)
                for name in ("sample.wav", "sample.rttm"):
                    (sample / name).write_bytes(wheel.read(f"pyannote/audio/sample/{name}"))
    reference = rttm((sample / "sample.rttm").read_text())
    with tempfile.TemporaryDirectory(prefix="bench-spk-overlap-") as tmp:
        (run,) = common.daemon_transcribe_all([sample / "sample.wav"], model, Path(tmp), settings={
            "WHISPER_DAEMON_SPEAKERS": "auto", "WHISPER_DAEMON_FORMATS": FORMATS})
        hypothesis = rttm(next(Path(p) for p in run.job["outputs"] if p.endswith(".rttm")).read_text())
    speech = reference.get_timeline().support().duration()
    overlapped = reference.get_overlap().duration()
    scored = DiarizationErrorRate(collar=0.25)(reference, hypothesis, detailed=True)
    clean = DiarizationErrorRate(collar=0.25, skip_overlap=True)(reference, hypothesis)
    parts = {k: scored[k] / scored["total"] for k in ("confusion", "missed detection", "false alarm")}
    print(f"real conversation with overlap (pyannote.audio's sample, {len(reference.labels())} people, "
          f"{overlapped:.1f} s of {speech:.1f} s of speech overlapped): found {len(hypothesis.labels())} speakers; "
          f"DER {pct(scored['diarization error rate'])} (" + ", ".join(f"{k} {pct(v)}" for k, v in parts.items())
          + f"); without the overlapped stretches {pct(clean)}")
    return {"der": scored["diarization error rate"], "der_without_overlap": clean, "parts": parts,
            "speakers": len(hypothesis.labels()), "overlap_seconds": overlapped, "speech_seconds": speech}


def _cer(reference: str, hypothesis: str) -> float:
    from tests.speech import cer

    return cer(reference, hypothesis)


def cost(model: str, threads: int) -> dict[str, Any]:
    audio, _ = common.recording(5, 0)
    result: dict[str, Any] = {}
    for setting in ("off", "auto"):
        with tempfile.TemporaryDirectory(prefix="bench-spk-cost-") as tmp:
            (run,) = common.daemon_transcribe_all([audio], model, Path(tmp), settings={
                "WHISPER_DAEMON_SPEAKERS": setting, "WHISPER_DAEMON_FORMATS": FORMATS,
                "WHISPER_DAEMON_THREADS": str(threads)})
            log = (Path(tmp) / "log" / "worker.log").read_text()
            found = re.search(r"voice prints, (.*) in ([\d.]+) s", log)
            result[setting] = {"wall_seconds": run.measurement.wall_seconds, "peak_rss_mb": run.measurement.peak_rss_mb,
                               "transcription_seconds": run.job["rtf"] * run.job["audio_seconds"],
                               "speaker_seconds": float(found[2]) if found else 0.0,
                               "outcome": found[1] if found else "off"}
    on, off = result["auto"], result["off"]
    share = on["speaker_seconds"] / off["transcription_seconds"]
    delta = on["peak_rss_mb"] - off["peak_rss_mb"]
    print(common.table(["speakers", "transcription s", "speaker labelling s", "peak RSS", "labels"],
                       [[k, f"{v['transcription_seconds']:.1f}", f"{v['speaker_seconds']:.1f}", mb(v["peak_rss_mb"]),
                         v["outcome"]] for k, v in result.items()]))
    print(f"speaker labelling / transcription: {pct(share)} (target <= {pct(TARGETS['time_share'])}); peak RSS "
          f"+{delta:.0f} MB (target <= {TARGETS['rss_mb']:.0f} MB)")
    return {**result, "time_share": share, "rss_delta_mb": delta}


PASS_ALONE = """
import sys
from pathlib import Path
from daemon.engine.speakers import attribution, clustering
from daemon.engine.speakers.voices import VoicePrinter
prints = VoicePrinter().voices(Path(sys.argv[1]))
frames = attribution.frame_speakers(prints, clustering.cluster(prints, (1, 20)))
print(len(prints), len(attribution.turns(frames)))
"""


def memory() -> dict[str, Any]:
    """Peak RSS of a process that loads the speaker pass and runs it on a 5- and a 65-minute meeting."""
    result = {}
    for minutes in (5, 65):
        audio, _ = common.recording(minutes, 0)
        m = common.measure([common.PYTHON, "-c", PASS_ALONE, str(audio)], cwd=common.REPO)
        result[minutes] = {"peak_rss_mb": m.peak_rss_mb, "wall_seconds": m.wall_seconds, "out": m.stdout.strip()}
    ratio = result[65]["peak_rss_mb"] / result[5]["peak_rss_mb"]
    print(common.table(["meeting", "peak RSS MB", "wall s", "prints, turns"],
                       [[f"{k} min", mb(v["peak_rss_mb"]), f"{v['wall_seconds']:.1f}", v["out"]]
                        for k, v in result.items()]))
    print(f"speaker pass alone, 65-min / 5-min peak RSS: {ratio:.3f} (target <= 1.10)")
    return {**result, "ratio": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="base")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="the worker's torch threads (0: one per core); "
                        "1 keeps figures steady on a machine others load")
    parser.add_argument("--overlap", action="store_true", help="also: DER on a real conversation with overlap")
    parser.add_argument("--memory", action="store_true", help="also: peak RSS of the speaker pass alone, "
                        "5- vs 65-minute meeting")
    args = parser.parse_args()
    data: dict[str, Any] = {"machine": common.machine(), "model": args.model}
    if not args.skip_accuracy:
        data["accuracy"] = accuracy(args.model)
    if not args.skip_cost:
        data["cost"] = cost(args.model, args.threads)
    if args.overlap:
        data["overlap"] = overlap(args.model)
    if args.memory:
        data["memory"] = memory()
    print(common.write_result("speakers", data))


if __name__ == "__main__":
    main()
