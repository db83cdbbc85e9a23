"""openai-whisper's `model.transcribe()` with the daemon's decoding options, as its own process.

Usage: python bench/_transcribe.py CHECKPOINT.pt AUDIO OUT.json [--language en]

Run as a child process (by bench/accuracy.py, through common.measure) so its wall time and memory
count the same things as our worker's: interpreter start, model load, decoding.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

# The daemon's defaults (daemon/engine.py, daemon/config.py), spelled out for transcribe().
OPTIONS: dict[str, Any] = {
    "temperature": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
    "compression_ratio_threshold": 2.4,
    "logprob_threshold": -1.0,
    "no_speech_threshold": 0.6,
    "condition_on_previous_text": True,
    "beam_size": 2,  # two beams at temperature 0
    "best_of": 5,  # samples per fallback temperature, as DecodeSettings.best_of (transcribe() defaults to 1)
    "fp16": False,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("audio")
    parser.add_argument("out")
    parser.add_argument("--language", default=None)
    args = parser.parse_args()

    import whisper  # after argument parsing: a usage error should not wait for torch

    model = whisper.load_model(args.checkpoint, device="cpu")
    result = model.transcribe(args.audio, language=args.language, verbose=None, **OPTIONS)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"text": result["text"], "language": result["language"], "options": OPTIONS,
                   "segments": [{"start": s["start"], "end": s["end"], "text": s["text"]}
                                for s in result["segments"]]}, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
