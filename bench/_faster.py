"""faster-whisper as its own measured process:
`_faster.py CT2_DIR OUTDIR AUDIO... [--language en]`, writing OUTDIR/<audio stem>.srt for each file.

Its defaults (beam 5, best_of 5, temperature fallback, previous text as prompt, no VAD), on CPU
with int8 compute. Audio is decoded by faster-whisper itself (PyAV). The model folder is a local
CTranslate2 folder, so nothing is downloaded (HF_HUB_OFFLINE is set as well, to be sure). The files
are transcribed in order by one WhisperModel (the model loaded once); the last line on stdout is
`after_load_seconds=S`, the time from the model loaded to the last SRT written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from daemon.files.outputs import write_atomic
from daemon.formats.cues import Cue
from daemon.formats.subtitles import srt

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("outdir", type=Path)
    parser.add_argument("audio", type=Path, nargs="+")
    parser.add_argument("--language", default=None)
    parser.add_argument("--compute-type", default="int8")
    args = parser.parse_args()
    if len({a.stem for a in args.audio}) != len(args.audio):
        sys.exit("two audio files share a name: their SRTs would overwrite each other")

    from faster_whisper import WhisperModel

    model = WhisperModel(args.model_dir, device="cpu", compute_type=args.compute_type)
    loaded = time.perf_counter()
    for audio in args.audio:
        segments, info = model.transcribe(str(audio), language=args.language)  # a generator: decoding runs here
        # The engine's own segments as cues, unshaped: its output, and no time of ours in its run.
        cues = [Cue(s.start, s.end, (s.text.strip(),), ()) for s in segments if s.text.strip()]
        write_atomic(args.outdir / f"{audio.stem}.srt", srt(cues))
        print(f"faster-whisper: {audio.name}: {len(cues)} cues, language {info.language}, "
              f"{info.duration:.1f} s of audio", file=sys.stderr)
    print(f"after_load_seconds={time.perf_counter() - loaded:.3f}")


if __name__ == "__main__":
    main()
