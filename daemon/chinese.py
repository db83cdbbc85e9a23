"""Chinese transcripts: one script throughout, converted with OpenCC, and a prompt that asks for punctuation.

Whisper writes Mandarin in simplified or traditional characters as it pleases, sometimes both in
one recording, and mostly without punctuation. Two things fix that:

- every Chinese segment is converted to the chosen script with OpenCC (BYVoid/OpenCC, the
  converter most Chinese software uses: phrase-level tables, so 头发 → 頭髮 but 发展 → 發展);
- a short sentence in that script, with full-width punctuation, is given to the model as the
  start of its prompt on every window. Whisper continues the style of the text before it, so it
  writes the same script and punctuates (measured in bench/realspeech.py).

Only transcripts whose language is Chinese are touched: Japanese kanji are never converted.
"""

from __future__ import annotations

from functools import cache

import opencc

CHINESE = "zh"  # whisper's language code for Chinese (Mandarin)
_OPENCC = {"simplified": "t2s", "traditional": "s2t"}  # OpenCC's standard tables (not a regional variant)
# Simplified Chinese with a comma and a full stop: "What follows are sentences in Mandarin." The
# style sample whisper users settled on for simplified, punctuated Mandarin.
PUNCTUATION_PROMPT = "以下是普通话的句子，请以标点符号断句。"


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
