"""Speech detection (VAD): words invented over non-speech, what VAD costs on a meeting, and silence at full length.

Three parts, each in whole processes (interpreter start and model load included), baseline in the same run:

(a) nonspeech: words in the transcripts of the non-speech corpus (tests/fixtures/nonspeech: room
    tone, pink and brown noise, music, applause, typing, hum), and, on the committed English real
    speech followed by 60 s of room tone (tests.nonspeech.speech_then_room_tone), words in cues that
    start more than 1 s after the speech ends. Three engines, all at their defaults (language detected):
    - `on`   our `work --exit-when-empty` on a queue holding every clip (VAD on: the default);
    - `off`  the same with WHISPER_DAEMON_VAD=false (the energy gate only, as before VAD);
    - `cli`  openai-whisper's CLI (beam 5, best_of 5, temperature fallback), fp32, same checkpoint.
    Target: 0 words for `on`.
(b) meeting: wall time and WER of our worker on a synthetic meeting (tests.speech.meeting), VAD on vs
    off, run alternately --repeat times; medians and on/off. Targets: on/off wall ≤ 1.0 (VAD costs no
    more than it saves) and WER with VAD no worse than without.
(c) silence: our worker (VAD on) on hours of digital silence and of white-noise room tone
    (tests.speech.write_silence, cached in bench/out/audio), with VAD off on the digital silence as
    the baseline (VAD off on room tone would run the model on every window for hours). Target: each
    well under a minute (< 60 s) for 3 hours.

Writes bench/out/vad.json (after each part). Part (a) is slow without VAD: on noise both baselines
fall back through every temperature, best_of 5 each. On 2 busy cores (AMD EPYC, load ~4), `off`
took 37 minutes for the 8 clips and the CLI 13.6 minutes for one 30 s clip; `on` takes 30 s.

    .venv/bin/python bench/vad.py [--parts nonspeech meeting silence] [--model base] [--engines on off cli]
                                  [--minutes 5] [--repeat 3] [--hours 3] [--room-dbfs -55]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import common
from common import Measurement, pct

from tests import nonspeech
from tests.speech import write_audio

VAD_OFF = {"WHISPER_DAEMON_VAD": "false"}
ENGINES = {"on": "ours, VAD on", "off": "ours, VAD off", "cli": "openai-whisper CLI"}
TAIL_SECONDS = 60.0
TAIL_GRACE_SECONDS = 1.0  # as tests/test_nonspeech.py: a cue may start this long after the last word
SILENCE_TARGET_SECONDS = 60.0


def invented_words(srt_path: Path, after: float | None = None) -> tuple[int, list[str]]:
    """(words, cue texts) of an SRT; with `after`, only of the cues that start after it (seconds)."""
    import srt

    cues = [c for c in srt.parse(srt_path.read_text(encoding="utf-8"))
            if after is None or c.start.total_seconds() > after]
    return sum(nonspeech.word_count(c.content) for c in cues), [c.content for c in cues]


def part_nonspeech(model: str, engines: list[str], tmp: Path) -> dict[str, Any]:
    tmp.mkdir(parents=True)
    tail = nonspeech.speech_then_room_tone(TAIL_SECONDS)
    tail_path = write_audio(tail.recording.audio, tmp / "speech_then_room_tone.flac")
    clips = [*nonspeech.clips(), tail_path]
    after = {tail_path: tail.speech_end + TAIL_GRACE_SECONDS}  # the other clips: every word is invented
    results: dict[str, Any] = {}
    for engine in engines:
        if engine == "cli":
            m, srt_paths = common.whisper_cli_all(clips, common.converted_checkpoint(model), tmp / "cli", language=None)
        else:
            runs = common.daemon_transcribe_all(clips, model, tmp / engine,
                                                settings=VAD_OFF if engine == "off" else None)
            m, srt_paths = runs[0].measurement, [run.srt_path for run in runs]
        per_clip = {}
        for clip, srt_path in zip(clips, srt_paths):
            count, texts = invented_words(srt_path, after.get(clip))
            per_clip[clip.stem] = {"words": count, "cues": texts}
        results[engine] = {"clips": per_clip, "total_words": sum(c["words"] for c in per_clip.values()),
                           "wall_seconds": m.wall_seconds, "cpu_seconds": m.cpu_seconds}
        print(f"  nonspeech {engine}: {results[engine]['total_words']} words, {m.wall_seconds:.0f} s ("
              + ", ".join(f"{clip} {found['words']}" for clip, found in per_clip.items()) + ")", flush=True)
    rows = [[clip.stem if clip != tail_path else f"{clip.stem} (after {after[clip]:.1f} s)",
             *(results[e]["clips"][clip.stem]["words"] for e in engines)] for clip in clips]
    rows.append(["total words", *(results[e]["total_words"] for e in engines)])
    rows.append(["wall s (one process, all clips)", *(f"{results[e]['wall_seconds']:.0f}" for e in engines)])
    print(f"\n(a) words invented on non-speech, model {model}\n")
    print(common.table(["clip", *(ENGINES[e] for e in engines)], rows))
    for engine in engines:
        for clip, found in results[engine]["clips"].items():
            if found["words"]:
                print(f"  {engine} {clip}: {' | '.join(found['cues'])[:160]}")
    return results


def part_meeting(model: str, minutes: float, repeat: int, tmp: Path) -> dict[str, Any]:
    audio, reference = common.recording(minutes, seed=0)
    common.warm_file_cache(audio)
    runs: dict[str, list[Measurement]] = {"on": [], "off": []}
    wers: dict[str, float] = {}
    for i in range(repeat):
        # Alternate which side goes first, so a change of load on the machine does not always hit the same one.
        for side in ("on", "off") if i % 2 == 0 else ("off", "on"):
            (run,) = common.daemon_transcribe_all([audio], model, tmp / f"meeting-{side}-{i}",
                                                  settings=VAD_OFF if side == "off" else None)
            runs[side].append(run.measurement)
            wers[side] = common.wer(reference, common.srt_text(run.srt_path))  # deterministic: the same every run
            print(f"  meeting run {i + 1}/{repeat} VAD {side}: {run.measurement.wall_seconds:.1f} s, "
                  f"WER {pct(wers[side])}", flush=True)
    result: dict[str, Any] = {"audio": str(audio), "audio_seconds": common.audio_seconds(audio)}
    for side, ms in runs.items():
        result[side] = {"wall_seconds": statistics.median(m.wall_seconds for m in ms),
                        "cpu_seconds": statistics.median(m.cpu_seconds for m in ms), "wer": wers[side],
                        "runs": [m.summary() for m in ms]}
    result["wall_ratio"] = result["on"]["wall_seconds"] / result["off"]["wall_seconds"]
    result["cpu_ratio"] = result["on"]["cpu_seconds"] / result["off"]["cpu_seconds"]
    rows = [[f"VAD {side}", f"{result[side]['wall_seconds']:.1f}", f"{result[side]['cpu_seconds']:.1f}",
             pct(result[side]["wer"])] for side in ("on", "off")]
    rows.append(["ratio on/off", f"{result['wall_ratio']:.2f}x", f"{result['cpu_ratio']:.2f}x", ""])
    print(f"\n(b) {Path(audio).name}, model {model}, medians of {repeat} run(s) per side\n")
    print(common.table(["our worker", "wall s", "cpu s", "WER"], rows))
    return result


def part_silence(model: str, hours: float, room_dbfs: list[float], tmp: Path) -> dict[str, Any]:
    cases = [("zeros", None, "on"), ("zeros", None, "off"), *((f"room tone {d:g} dBFS", d, "on") for d in room_dbfs)]
    results: dict[str, Any] = {}
    rows = []
    for i, (kind, dbfs, side) in enumerate(cases):
        audio = common.silence(hours, dbfs)
        (run,) = common.daemon_transcribe_all([audio], model, tmp / f"silence-{i}",
                                              settings=VAD_OFF if side == "off" else None)
        words, cues = invented_words(run.srt_path)
        m = run.measurement
        results[f"{kind}, VAD {side}"] = {"audio": str(audio), "wall_seconds": m.wall_seconds,
                                          "cpu_seconds": m.cpu_seconds, "peak_rss_mb": m.peak_rss_mb,
                                          "words": words, "cues": cues[:10]}
        rows.append([f"{kind}, VAD {side}", f"{m.wall_seconds:.1f}", f"{m.cpu_seconds:.1f}",
                     f"{m.wall_seconds / (hours * 3600):.4f}", words])
        print(f"  silence {kind} VAD {side}: {m.wall_seconds:.1f} s, {words} words", flush=True)
    print(f"\n(c) {hours:g} h of silence, model {model} (whole worker process, model load included)\n")
    print(common.table(["recording", "wall s", "cpu s", "wall/audio", "words"], rows))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=["nonspeech", "meeting", "silence"],
                        choices=["nonspeech", "meeting", "silence"])
    parser.add_argument("--model", default="base", help="the product default")
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES), help="for part (a)")
    parser.add_argument("--minutes", type=float, default=5.0, help="meeting length, part (b)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per side, part (b)")
    parser.add_argument("--hours", type=float, default=3.0, help="silence length, part (c)")
    parser.add_argument("--room-dbfs", nargs="*", type=float, default=[-55.0],
                        help="room-tone levels (white noise RMS, dBFS) besides digital silence, part (c)")
    args = parser.parse_args()

    machine = common.machine()
    common.converted_checkpoint(args.model)  # converts once, before anything is timed
    results: dict[str, Any] = {}
    targets: dict[str, bool] = {}

    def save() -> Path:  # after each part: an hour-long run stopped midway keeps what it measured
        return common.write_result("vad", {"params": vars(args), "machine": machine, "targets": targets,
                                           "results": results})

    with tempfile.TemporaryDirectory(prefix="bench-vad-") as tmp:
        if "nonspeech" in args.parts:
            results["nonspeech"] = part_nonspeech(args.model, args.engines, Path(tmp) / "nonspeech")
            if "on" in results["nonspeech"]:
                targets["(a) 0 words on non-speech with VAD"] = results["nonspeech"]["on"]["total_words"] == 0
            save()
        if "meeting" in args.parts:
            r = results["meeting"] = part_meeting(args.model, args.minutes, args.repeat, Path(tmp) / "meeting")
            targets["(b) VAD costs no more than it saves (on/off wall <= 1)"] = r["wall_ratio"] <= 1.0
            targets["(b) meeting WER with VAD <= without"] = r["on"]["wer"] <= r["off"]["wer"]
            save()
        if "silence" in args.parts:
            r = results["silence"] = part_silence(args.model, args.hours, args.room_dbfs, Path(tmp) / "silence")
            for name, s in r.items():
                if name.endswith("VAD on"):
                    targets[f"(c) {args.hours:g} h of {name} in < {SILENCE_TARGET_SECONDS:g} s, no words"] = (
                        s["wall_seconds"] < SILENCE_TARGET_SECONDS and s["words"] == 0)
    print()
    for name, met in targets.items():
        print(f"  {'met' if met else 'MISSED'}: {name}")
    print(f"wrote {save().relative_to(common.REPO)}")


if __name__ == "__main__":
    main()
