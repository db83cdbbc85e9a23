"""faster-whisper as its own measured process: `_faster.py AUDIO CT2_DIR OUT.srt [--language en]`.

Its defaults (beam 5, best_of 5, temperature fallback, previous text as prompt, no VAD), on CPU
with int8 compute. Audio is decoded by faster-whisper itself (PyAV). The model folder is a local
CTranslate2 folder, so nothing is downloaded (HF_HUB_OFFLINE is set as well, to be sure).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from daemon.formats.cues import Cue
from daemon.formats.subtitles import srt
from daemon.outputs import write_atomic

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("audio")
    parser.add_argument("model_dir")
    parser.add_argument("out", type=Path)
    parser.add_argument("--language", default=None)
    parser.add_argument("--compute-type", default="int8")
    args = parser.parse_args()

    from faster_whisper import WhisperModel

    model = WhisperModel(args.model_dir, device="cpu", compute_type=args.compute_type)
    segments, info = model.transcribe(args.audio, language=args.language)  # a generator: decoding runs here
    # The engine's own segments as cues, unshaped: its output, and no time of ours in its run.
    cues = [Cue(s.start, s.end, (s.text.strip(),), ()) for s in segments if s.text.strip()]
    write_atomic(args.out, srt(cues))
    n = len(cues)
    print(f"faster-whisper: {n} cues, language {info.language}, {info.duration:.1f} s of audio", file=sys.stderr)


if __name__ == "__main__":
    main()
