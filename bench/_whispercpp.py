"""whisper.cpp (pywhispercpp) as its own measured process:
`_whispercpp.py AUDIO MODEL.ggml.bin OUT.srt [--threads 2] [--language en]`.

pywhispercpp's defaults (whisper.cpp's greedy sampling with best_of 5 and temperature fallback),
with n_threads set. Audio goes through pywhispercpp's own loader, which converts a non-WAV file
with the ffmpeg CLI to a temporary 16 kHz WAV (ffmpeg is counted: it is in the process tree).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from daemon.formats.cues import Cue
from daemon.formats.subtitles import srt
from daemon.outputs import write_atomic


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("audio")
    parser.add_argument("model")
    parser.add_argument("out", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--language", default=None, help="whisper.cpp's default is en")
    args = parser.parse_args()

    from pywhispercpp.model import Model

    if not Path(args.model).is_file():  # pywhispercpp would try to download a model by that name
        sys.exit(f"no such ggml file: {args.model}")
    params = {"n_threads": args.threads}
    if args.language:
        params["language"] = args.language
    model = Model(args.model, redirect_whispercpp_logs_to=None, **params)
    segments = model.transcribe(args.audio)
    # t0/t1 are in centiseconds (whisper.cpp's 10 ms units)
    # The engine's own segments as cues, unshaped: its output, and no time of ours in its run.
    cues = [Cue(s.t0 / 100, s.t1 / 100, (s.text.strip(),), ()) for s in segments if s.text.strip()]
    write_atomic(args.out, srt(cues))
    n = len(cues)
    print(f"whisper.cpp: {n} cues", file=sys.stderr)


if __name__ == "__main__":
    main()
