"""Another engine as its own measured process (run by common.measure), writing OUTDIR/<audio stem>.srt
for each file:

    _peer.py faster  CT2_DIR        OUTDIR AUDIO... [--language en] [--compute-type int8]
    _peer.py cpp     MODEL.ggml.bin OUTDIR AUDIO... [--language en] [--threads 2]
    _peer.py whisper CHECKPOINT.pt  OUTDIR AUDIO... [--language en] [--options JSON]

- `faster`: faster-whisper at its defaults (beam 5, best_of 5, temperature fallback, previous text
  as prompt, no VAD), on CPU with int8 compute; audio decoded by faster-whisper itself (PyAV). The
  model folder is a local CTranslate2 folder, so nothing is downloaded (HF_HUB_OFFLINE as well).
- `cpp`: whisper.cpp through pywhispercpp at its defaults (greedy sampling with best_of 5 and
  temperature fallback) with n_threads set. pywhispercpp converts a non-WAV file with the ffmpeg
  CLI to a temporary 16 kHz WAV (ffmpeg is counted: it is in the process tree).
- `whisper`: openai-whisper's `model.transcribe()` with the keyword arguments in --options (the
  parent reads them from the daemon's defaults: bench/accuracy.py), fp32 on CPU.

The files are transcribed in order by one model (loaded once); each engine's own segments become
the cues, unshaped: its output, and no time of ours in its run (the daemon's SRT writer is
imported, ~0.1 s, by every engine alike). The last line on stdout is `after_load_seconds=S`, the
time from the model loaded to the last SRT written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from daemon.files.outputs import write_atomic
from daemon.formats.cues import Cue
from daemon.formats.subtitles import srt

Segments = list[tuple[float, float, str]]  # start, end (seconds), text


def load_faster(args: argparse.Namespace) -> Callable[[Path], Segments]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from faster_whisper import WhisperModel

    model = WhisperModel(args.model, device="cpu", compute_type=args.compute_type)

    def run(audio: Path) -> Segments:
        segments, _ = model.transcribe(str(audio), language=args.language)  # a generator: decoding runs here
        return [(s.start, s.end, s.text) for s in segments]
    return run


def load_cpp(args: argparse.Namespace) -> Callable[[Path], Segments]:
    from pywhispercpp.model import Model

    if not Path(args.model).is_file():  # pywhispercpp would try to download a model by that name
        sys.exit(f"no such ggml file: {args.model}")
    params = {"n_threads": args.threads, **({"language": args.language} if args.language else {})}
    model = Model(args.model, redirect_whispercpp_logs_to=None, **params)
    # t0/t1 are in centiseconds (whisper.cpp's 10 ms units)
    return lambda audio: [(s.t0 / 100, s.t1 / 100, s.text) for s in model.transcribe(str(audio))]


def load_whisper(args: argparse.Namespace) -> Callable[[Path], Segments]:
    import whisper

    model = whisper.load_model(args.model, device="cpu")

    def run(audio: Path) -> Segments:
        result = model.transcribe(str(audio), language=args.language, verbose=None, **args.options)
        return [(s["start"], s["end"], s["text"]) for s in result["segments"]]
    return run


ENGINES = {"faster": load_faster, "cpp": load_cpp, "whisper": load_whisper}  # each loads its model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("engine", choices=list(ENGINES))
    parser.add_argument("model", help="CTranslate2 folder (faster), ggml file (cpp) or .pt checkpoint (whisper)")
    parser.add_argument("outdir", type=Path)
    parser.add_argument("audio", type=Path, nargs="+")
    parser.add_argument("--language", default=None, help="default: detected (whisper.cpp's default: en)")
    parser.add_argument("--compute-type", default="int8", help="faster")
    parser.add_argument("--threads", type=int, default=2, help="cpp")
    parser.add_argument("--options", type=json.loads, default={}, help="whisper: keyword arguments of transcribe()")
    args = parser.parse_args()
    if len({a.stem for a in args.audio}) != len(args.audio):
        sys.exit("two audio files share a name: their SRTs would overwrite each other")

    transcribe = ENGINES[args.engine](args)  # loads the model
    loaded = time.perf_counter()
    for audio in args.audio:
        cues = [Cue(start, end, (text.strip(),), ()) for start, end, text in transcribe(audio) if text.strip()]
        write_atomic(args.outdir / f"{audio.stem}.srt", srt(cues))
        print(f"{args.engine}: {audio.name}: {len(cues)} cues", file=sys.stderr)
    print(f"after_load_seconds={time.perf_counter() - loaded:.3f}")


if __name__ == "__main__":
    main()
