"""Chinese transcripts: one script throughout, converted with OpenCC, and punctuated.

Whisper writes Mandarin in simplified or traditional characters as it pleases, sometimes both in
one recording, and mostly without punctuation. Two things fix that:

- every Chinese segment is converted to the chosen script with OpenCC (BYVoid/OpenCC, the
  converter most Chinese software uses: phrase-level tables, so 头发 → 頭髮 but 发展 → 發展);
- a short sentence in that script, with full-width punctuation, is the prompt of a second pass
  over each window's text that may only add marks (decoder.Decoder.punctuate): whisper continues
  the style of the text before it, so it punctuates. Given to the decoding itself, the same
  prompt also changes the words, and costs about 2 points of CER (docs/benchmarks.md, Real speech).

Only transcripts whose language is Chinese are touched: Japanese kanji are never converted.
"""

from __future__ import annotations

import re
from functools import cache

import opencc

CHINESE = "zh"  # whisper's language code for Chinese (Mandarin)
_OPENCC = {"simplified": "t2s", "traditional": "s2t"}  # OpenCC's standard tables (not a regional variant)
# Simplified Chinese with a comma and a full stop: "What follows are sentences in Mandarin." The
# style sample whisper users settled on for simplified, punctuated Mandarin.
PUNCTUATION_PROMPT = "以下是普通话的句子，请以标点符号断句。"
MARKS = "，。？！、；："  # the full-width marks a punctuation pass may add (the same in both scripts)


_FULL_WIDTH = str.maketrans(",.?!;:", "，。？！；：")
# An ASCII mark touching a Han character (but not a decimal point): whisper writes "6月底," as often as "6月底，".
_HALF_WIDTH_MARK = re.compile(r"(?<=[\u4e00-\u9fff])(?:[,?!;:]|\.(?!\d))|[,?!;:](?=[\u4e00-\u9fff])")


@cache
def _converter(config: str) -> opencc.OpenCC:
    return opencc.OpenCC(config)


def convert(text: str, script: str) -> str:
    """`text` in `script` (simplified or traditional); unchanged for as-is."""
    if script == "as-is":
        return text
    return _converter(_OPENCC[script]).convert(text)


def language_prompt(script: str) -> str:
    """The style sample for Mandarin in `script`; none for as-is, which leaves the model alone."""
    return "" if script == "as-is" else convert(PUNCTUATION_PROMPT, script)


def full_width(text: str) -> str:
    """Chinese text with the full-width marks Chinese writing uses where the model wrote ASCII ones
    between Han characters; "3,000" and "2.5" are left alone."""
    return _HALF_WIDTH_MARK.sub(lambda m: m.group().translate(_FULL_WIDTH), text)
