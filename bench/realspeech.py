"""Real speech: English WER and Mandarin CER of our worker and of the openai-whisper CLI, same weights, one run.

The clips are real recordings with exact references (../shared/realspeech: read audiobooks, a
1961 broadcast, read Mandarin; and bench/realspeech: more read Mandarin, AISHELL-1 and THCHS-30;
their READMEs give the sources and licences). Both engines run
at their defaults with the language detected per file, on every clip, in one process each (the
model loaded once):

- `ours`  `python -m daemon work --exit-when-empty` on a queue holding every clip
          (common.daemon_transcribe_all()); `--set NAME=VALUE` changes one of its settings;
- `cli`   openai-whisper's `whisper` CLI (beam 5, best_of 5, temperature fallback), fp32, with the
          checkpoint our worker loads (common.whisper_cli_all()).

Scores, over all clips of a language (errors summed, then divided by the reference's length):
- English WER: words after openai-whisper's EnglishTextNormalizer, both sides (tests.speech.words);
- Mandarin CER: characters without punctuation or spaces, both sides converted to simplified
  with OpenCC (tests.speech.mandarin_characters);
- traditional: the share of the Han characters of the Mandarin output that OpenCC's
  traditional→simplified table (t2s) changes, i.e. characters written in traditional script;
- punctuated cues: the share of Mandarin cues holding at least one punctuation mark.

Targets: our WER ≤ the CLI's, our CER ≤ the CLI's, 0% traditional characters in our output,
punctuation in most (> 50%) of our Mandarin cues. Writes bench/out/realspeech.json.

    .venv/bin/python bench/realspeech.py [--model base] [--engines ours cli] [--set chinese_script=as-is]
"""

from __future__ import annotations

import argparse
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
from common import pct

from tests.daemon_proc import srt_cues
from tests.speech import edit_distance, mandarin_characters, words

# ../shared/realspeech beside the project (/work/main), or two levels up from a worktree (/work/wt/x)
SHARED = next((p for p in (common.REPO.parent / "shared" / "realspeech", common.REPO.parent.parent / "shared" / "realspeech")
               if p.is_dir()), common.REPO.parent / "shared" / "realspeech")
MORE = common.BENCH / "realspeech"  # 26 more Mandarin clips, committed (bench/realspeech/README.md)
LANGUAGES = ("en", "zh")  # the folders of the corpus scored here
PUNCTUATED_TARGET = 0.5  # most Mandarin cues


def clips(language: str, corpora: list[Path] | tuple[Path, ...] = (SHARED, MORE)) -> list[Path]:
    """The recordings of `language` (a folder of each corpus), each beside its .txt reference."""
    return sorted(p for corpus in corpora if (corpus / language).is_dir() for p in (corpus / language).iterdir()
                  if p.suffix in (".wav", ".flac"))


@dataclass
class Score:
    errors: int = 0
    reference: int = 0  # words (English) or characters (Mandarin)
    han: int = 0  # Mandarin: Han characters written
    traditional: int = 0  # …of which t2s changes
    cues: int = 0
    punctuated: int = 0
    clips: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.errors / max(self.reference, 1)

    def summary(self) -> dict[str, Any]:
        data = {"error_rate": round(self.rate, 4), "errors": self.errors, "reference": self.reference,
                "clips": self.clips}
        if self.cues:
            data |= {"traditional_share": round(self.traditional / max(self.han, 1), 4),
                     "punctuated_cue_share": round(self.punctuated / self.cues, 4), "cues": self.cues}
        return data


def _is_han(c: str) -> bool:
    return unicodedata.name(c, "").startswith("CJK UNIFIED IDEOGRAPH")


def traditional_characters(text: str) -> tuple[int, int]:
    """(Han characters, how many of them t2s changes). t2s maps character for character, so the
    edit distance between the text and its simplified form counts the changed ones."""
    from daemon.engine.chinese import convert

    han = [c for c in text if _is_han(c)]
    return len(han), edit_distance(han, list(convert("".join(han), "simplified")))


def score(language: str, recordings: list[Path], srt_paths: list[Path]) -> Score:
    total = Score()
    for clip, srt_path in zip(recordings, srt_paths):
        reference = clip.with_suffix(".txt").read_text(encoding="utf-8").strip()
        cues = srt_cues(srt_path)
        text = " ".join(cues)
        if language == "zh":
            ref, hyp = mandarin_characters(reference), mandarin_characters(text)
            han, traditional = traditional_characters(text)
            total.han += han
            total.traditional += traditional
            total.cues += len(cues)
            total.punctuated += sum(any(unicodedata.category(c).startswith("P") for c in cue) for cue in cues)
        else:
            ref, hyp = words(reference), words(text)
        errors = edit_distance(ref, hyp)
        total.errors += errors
        total.reference += len(ref)
        total.clips.append({"clip": clip.name, "errors": errors, "reference": len(ref), "text": text})
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="base")
    parser.add_argument("--corpus", type=Path, nargs="+", default=[SHARED, MORE],
                        help="folders holding en/ and zh/ clips, each with a .txt reference")
    parser.add_argument("--engines", nargs="+", default=["ours", "cli"], choices=["ours", "cli"])
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="a setting of ours, e.g. beam_size=5 or chinese_script=as-is")
    args = parser.parse_args()
    settings = {f"WHISPER_DAEMON_{k.upper()}": v for k, v in (item.split("=", 1) for item in args.set)}

    by_language = {lang: clips(lang, args.corpus) for lang in LANGUAGES}
    every = [c for lang in LANGUAGES for c in by_language[lang]]
    machine = common.machine()
    checkpoint = common.converted_checkpoint(args.model)
    results: dict[str, dict[str, Score]] = {}
    precision = ""
    with tempfile.TemporaryDirectory(prefix="bench-realspeech-") as tmp:
        if "ours" in args.engines:
            runs = common.daemon_transcribe_all(every, args.model, Path(tmp) / "ours", settings=settings)
            srt = {run_clip: run.srt_path for run_clip, run in zip(every, runs)}
            precision = runs[0].precision  # bf16 and fp32 write different text: say which one ran
            results["ours"] = {lang: score(lang, by_language[lang], [srt[c] for c in by_language[lang]])
                               for lang in LANGUAGES}
        if "cli" in args.engines:
            outdir = Path(tmp) / "cli"
            _, srt_paths = common.whisper_cli_all(every, checkpoint, outdir, language=None)
            srt = dict(zip(every, srt_paths))
            results["cli"] = {lang: score(lang, by_language[lang], [srt[c] for c in by_language[lang]])
                               for lang in LANGUAGES}

    rows = [[engine, f"{len(by_language['en'])} clips, {by['en'].reference} words", pct(by["en"].rate),
             pct(by["zh"].rate), pct(by["zh"].traditional / max(by["zh"].han, 1)),
             pct(by["zh"].punctuated / max(by["zh"].cues, 1))] for engine, by in results.items()]
    print(f"model {args.model}; ours with {args.set or 'default settings'} (precision {precision or '-'}); "
          f"Mandarin: {len(by_language['zh'])} clips, {next(iter(results.values()))['zh'].reference} characters")
    print(common.table(["engine", "English", "WER", "Mandarin CER", "traditional", "punctuated cues"], rows))
    targets: dict[str, bool] = {}
    if "ours" in results:
        ours = results["ours"]["zh"]
        targets["no traditional characters"] = ours.traditional == 0
        targets["punctuation in most Mandarin cues"] = ours.punctuated / max(ours.cues, 1) > PUNCTUATED_TARGET
        if "cli" in results:
            targets["English WER <= CLI"] = results["ours"]["en"].rate <= results["cli"]["en"].rate
            targets["Mandarin CER <= CLI"] = ours.rate <= results["cli"]["zh"].rate
    for name, met in targets.items():
        print(f"  {'met' if met else 'MISSED'}: {name}")
    path = common.write_result("realspeech", {
        "model": args.model, "settings": args.set, "precision": precision, "machine": machine, "targets": targets,
        "results": {engine: {lang: s.summary() for lang, s in by.items()} for engine, by in results.items()}})
    print(f"wrote {path.relative_to(common.REPO)}")


if __name__ == "__main__":
    main()
