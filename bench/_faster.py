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

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _stamp(seconds: float) -> str:
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def write_srt(path: Path, cues) -> int:
    """(start s, end s, text) cues as SRT, written to a temp name and renamed; returns the cue count.
    Inline rather than shared, so this measured process imports nothing beyond the peer."""
    lines: list[str] = []
    n = 0
    for start, end, text in cues:
        text = text.strip()
        if text:
            n += 1
            lines += [str(n), f"{_stamp(start)} --> {_stamp(max(end, start))}", text, ""]
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text("\n".join(lines), encoding="utf-8")
    os.replace(partial, path)
    return n


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
    n = write_srt(args.out, ((s.start, s.end, s.text) for s in segments))
    print(f"faster-whisper: {n} cues, language {info.language}, {info.duration:.1f} s of audio", file=sys.stderr)


if __name__ == "__main__":
    main()
