"""whisper.cpp (pywhispercpp) as its own measured process:
`_whispercpp.py MODEL.ggml.bin OUTDIR AUDIO... [--threads 2] [--language en]`, writing
OUTDIR/<audio stem>.srt for each file.

pywhispercpp's defaults (whisper.cpp's greedy sampling with best_of 5 and temperature fallback),
with n_threads set. Audio goes through pywhispercpp's own loader, which converts a non-WAV file
with the ffmpeg CLI to a temporary 16 kHz WAV (ffmpeg is counted: it is in the process tree). The
files are transcribed in order by one Model (the model loaded once); the last line on stdout is
`after_load_seconds=S`, the time from the model loaded to the last SRT written.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from daemon.files.outputs import write_atomic
from daemon.formats.cues import Cue
from daemon.formats.subtitles import srt


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("outdir", type=Path)
    parser.add_argument("audio", type=Path, nargs="+")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--language", default=None, help="whisper.cpp's default is en")
    args = parser.parse_args()
    if len({a.stem for a in args.audio}) != len(args.audio):
        sys.exit("two audio files share a name: their SRTs would overwrite each other")

    from pywhispercpp.model import Model

    if not Path(args.model).is_file():  # pywhispercpp would try to download a model by that name
        sys.exit(f"no such ggml file: {args.model}")
    params = {"n_threads": args.threads}
    if args.language:
        params["language"] = args.language
    model = Model(args.model, redirect_whispercpp_logs_to=None, **params)  # loads the model
    loaded = time.perf_counter()
    for audio in args.audio:
        segments = model.transcribe(str(audio))
        # t0/t1 are in centiseconds (whisper.cpp's 10 ms units)
        # The engine's own segments as cues, unshaped: its output, and no time of ours in its run.
        cues = [Cue(s.t0 / 100, s.t1 / 100, (s.text.strip(),), ()) for s in segments if s.text.strip()]
        write_atomic(args.outdir / f"{audio.stem}.srt", srt(cues))
        print(f"whisper.cpp: {audio.name}: {len(cues)} cues", file=sys.stderr)
    print(f"after_load_seconds={time.perf_counter() - loaded:.3f}")


if __name__ == "__main__":
    main()
