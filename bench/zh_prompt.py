"""Mandarin: how punctuation is had, what it costs in CER and time, and what the beam width costs.

Our engine, in one process (model loaded once, in fp32, where our decoding's text is the CLI's;
bf16 changes a few characters either way), on the Mandarin clips of bench/realspeech.py (../shared/realspeech/zh and
bench/realspeech/zh), language detected, VAD off (it does not change these short clips' text), each
combination of:

- beam: 2 or 5 (our default, and the openai-whisper CLI's);
- way: `pass` (our default: the decoding has no style prompt, a second pass over its tokens adds
  marks, prompted with daemon/engine/chinese.PUNCTUATION_PROMPT; Decoder.punctuate), `prompt` (the same
  sample also given to the decoding itself, as the user's `prompt` setting is) or `none`
  (`chinese_script = "as-is"`: no sample, no pass, no conversion; the model's own punctuation).

Scored as bench/realspeech.py scores Mandarin (CER after removing punctuation and spaces, both sides
simplified) plus the share of cues holding a punctuation mark. Writes bench/out/zh_prompt.json.

    .venv/bin/python bench/zh_prompt.py [--model base] [--beams 2 5] [--ways pass prompt none]
"""

from __future__ import annotations

import argparse
import time
import unicodedata

import common
from realspeech import MORE, SHARED

from daemon.engine import chinese
from daemon.engine.transcribe import DecodeSettings, Engine
from daemon.engine.weights import load_model
from tests.speech import edit_distance, mandarin_characters

WAYS = {"pass": {}, "prompt": {"prompt": chinese.PUNCTUATION_PROMPT}, "none": {"chinese_script": "as-is"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="base")
    parser.add_argument("--beams", nargs="+", type=int, default=[2, 5])
    parser.add_argument("--ways", nargs="+", default=list(WAYS), choices=list(WAYS))
    args = parser.parse_args()
    clips = sorted(p for corpus in (SHARED, MORE) for p in (corpus / "zh").iterdir() if p.suffix in (".wav", ".flac"))
    model, _ = load_model(args.model, common.MODEL_CACHE)
    rows, results = [], []
    for way in args.ways:
        for beam in args.beams:
            engine = Engine(model, DecodeSettings(beam_size=beam, vad=False, **WAYS[way]))
            errors = reference = cues = punctuated = 0
            began = time.monotonic()
            for clip in clips:
                texts = [s.text for w in engine.windows(clip) for s in w.segments]
                ref = mandarin_characters(clip.with_suffix(".txt").read_text(encoding="utf-8").strip())
                errors += edit_distance(ref, mandarin_characters(" ".join(texts)))
                reference += len(ref)
                cues += len(texts)
                punctuated += sum(any(unicodedata.category(c).startswith("P") for c in t) for t in texts)
            seconds = time.monotonic() - began
            results.append({"way": way, "beam": beam, "errors": errors, "reference": reference,
                            "cues": cues, "punctuated": punctuated, "seconds": round(seconds, 1)})
            rows.append([way, beam, f"{common.pct(errors / reference)} ({errors}/{reference})",
                         f"{punctuated}/{cues}", f"{seconds:.0f}"])
            print(common.table(["way", "beam", "CER", "punctuated cues", "seconds"], rows[-1:]), flush=True)
    print(f"model {args.model}; {len(clips)} Mandarin clips")
    print(common.table(["way", "beam", "CER", "punctuated cues", "seconds"], rows))
    path = common.write_result("zh_prompt", {"model": args.model, "machine": common.machine(), "results": results})
    print(f"wrote {path.relative_to(common.REPO)}")


if __name__ == "__main__":
    main()
