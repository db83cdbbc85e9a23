"""openai-whisper's `model.transcribe()` with the given decoding options, as its own process.

Usage: python bench/_transcribe.py CHECKPOINT.pt AUDIO OUT.json OPTIONS_JSON [--language en]

Run as a child process (by bench/accuracy.py, through common.measure) so its wall time and memory
count the same things as our worker's: interpreter start, model load, decoding. The options come
from the parent, which reads them from the daemon's own defaults; importing the daemon here would
add its imports to the measured time.
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("audio")
    parser.add_argument("out")
    parser.add_argument("options", type=json.loads, help="keyword arguments of transcribe(), as JSON")
    parser.add_argument("--language", default=None)
    args = parser.parse_args()

    import whisper  # after argument parsing: a usage error should not wait for torch

    model = whisper.load_model(args.checkpoint, device="cpu")
    result = model.transcribe(args.audio, language=args.language, verbose=None, **args.options)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"text": result["text"], "language": result["language"], "options": args.options,
                   "segments": [{"start": s["start"], "end": s["end"], "text": s["text"]}
                                for s in result["segments"]]}, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
