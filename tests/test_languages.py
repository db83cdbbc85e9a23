"""Chinese script and punctuation, Japanese left alone, translation: base on real speech.

The recordings are real (tests/fixtures/realspeech, with their licences): read Mandarin from
AISHELL-1, a German and a Japanese read sentence.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from whisper.audio import N_FRAMES, log_mel_spectrogram, pad_or_trim
from whisper.model import Whisper
from whisper.tokenizer import get_tokenizer

from daemon.config import ConfigError
from daemon.engine.chinese import MARKS, PUNCTUATION_PROMPT, convert
from daemon.engine.decoder import Decoder
from daemon.engine.transcribe import DecodeSettings, Engine
from daemon.transcript import Checkpoint, Segment, Window
from tests.conftest import CliRunner
from tests.speech import cer, read_audio, words, write_audio

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).parent / "fixtures" / "realspeech"
AISHELL = sorted(FIXTURES.glob("aishell1_*.flac"))
EXIT_CONFIG = 78


def reference(clip: Path) -> str:
    return clip.with_suffix(".txt").read_text(encoding="utf-8").strip()


def transcribe(model: Whisper, path: Path, start: Checkpoint = Checkpoint(), **settings: str) -> list[Window]:
    return list(Engine(model, DecodeSettings(**settings)).windows(path, start))


def cues(windows: list[Window]) -> list[Segment]:
    return [s for w in windows for s in w.segments]


def has_traditional(text: str) -> bool:
    return convert(text, "simplified") != text


def punctuated(text: str) -> bool:
    return any(unicodedata.category(c).startswith("P") for c in text)


@pytest.fixture(scope="module")
def mandarin(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The three AISHELL-1 clips three times over, a second apart: 46 s, two windows."""
    gap = np.zeros(16000, np.float32)
    clips = AISHELL * 3
    audio = np.concatenate([part for clip in clips for part in (read_audio(clip), gap)])
    path = write_audio(audio, tmp_path_factory.mktemp("mandarin") / "aishell.flac")
    return path, "".join(reference(clip) for clip in clips)


def test_mandarin_comes_out_simplified_and_punctuated_by_default(base_model: Whisper,
                                                                 mandarin: tuple[Path, str]) -> None:
    path, ref = mandarin
    windows = transcribe(base_model, path)
    segments = cues(windows)
    text = "".join(s.text for s in segments)
    assert len(windows) >= 2 and windows[0].checkpoint.language == "zh"
    assert not has_traditional(text), text
    assert cer(ref, text) <= 0.25, text
    # Punctuation in most cues, in the second window too: every window has its punctuation pass.
    assert sum(punctuated(s.text) for s in segments) / len(segments) > 0.5, [s.text for s in segments]
    assert any(punctuated(s.text) for s in windows[-1].segments), [s.text for s in windows[-1].segments]


def without_marks(text: str) -> str:
    return "".join(c for c in text if not punctuated(c) and not c.isspace())


def test_punctuation_adds_marks_to_the_words_decoded_without_a_style_prompt(base_model: Whisper) -> None:
    """The style sample prompts the punctuation pass, not the decoding: given to the decoding, it
    changes a word on the third clip (但因为 → 大因为), which is why it is not."""
    marked = 0
    for clip in AISHELL:
        ours = cues(transcribe(base_model, clip))
        plain = cues(transcribe(base_model, clip, chinese_script="as-is"))  # no sample, no pass
        assert [(s.start, s.end) for s in ours] == [(s.start, s.end) for s in plain]
        assert [without_marks(s.text) for s in ours] == [without_marks(convert(s.text, "simplified")) for s in plain]
        assert not any(c in MARKS for s in plain for c in s.text), plain  # the marks below are the pass's
        marked += sum(c in MARKS for s in ours for c in s.text)
    assert marked >= 2, marked


def test_the_punctuation_pass_inserts_whole_marks_and_nothing_else(base_model: Whisper) -> None:
    tokenizer = get_tokenizer(True, num_languages=base_model.num_languages, language="zh")
    decoder = Decoder(base_model, tokenizer)
    marks = [tokenizer.encode(mark) for mark in MARKS]
    assert max(map(len, marks)) == 3  # "，" is three byte tokens: marks of several tokens are covered
    added: list[str] = []
    for clip in AISHELL:
        mel = pad_or_trim(log_mel_spectrogram(read_audio(clip), base_model.dims.n_mels), N_FRAMES)
        with torch.inference_mode():
            features = base_model.encoder(mel[None].to(base_model.encoder.conv1.weight.dtype))
        tokens = decoder.run(features, [], 0.0, 5)[0].tokens
        marked = decoder.punctuate(features, tokenizer.encode(" " + PUNCTUATION_PROMPT), tokens, marks)
        kept, at = 0, 0
        while at < len(marked):  # `marked` is `tokens` with whole marks between them
            if kept < len(tokens) and marked[at] == tokens[kept]:
                kept, at = kept + 1, at + 1
                continue
            mark = next((m for m in marks if marked[at:at + len(m)] == m), None)
            assert mark is not None, (tokenizer.decode(marked[:at + 1]), tokenizer.decode(tokens))
            added.append(tokenizer.decode(mark))
            at += len(mark)
        assert kept == len(tokens), tokenizer.decode(marked)
    assert len(added) >= 2, added


def test_traditional_when_asked(base_model: Whisper) -> None:
    text = "".join(s.text for clip in AISHELL for s in cues(transcribe(base_model, clip, chinese_script="traditional")))
    assert has_traditional(text) and convert(text, "traditional") == text, text
    assert cer("".join(map(reference, AISHELL)), text) <= 0.25, text  # the scorer converts both sides


def test_text_carried_in_traditional_still_comes_out_simplified(base_model: Whisper) -> None:
    """Whisper drifts into traditional characters when the text before a window is traditional (its
    own earlier output, on some recordings). Here that context is handed over in the checkpoint,
    as a resumed job would carry it; `as-is` shows what the model writes then."""
    tokenizer = get_tokenizer(True, num_languages=base_model.num_languages, language="zh")
    carried = Checkpoint(prompt=tuple(tokenizer.encode("我們在會議上討論了這個問題，還有經濟發展。")), language="zh")
    clip = AISHELL[0]
    as_is = "".join(s.text for s in cues(transcribe(base_model, clip, carried, chinese_script="as-is")))
    assert has_traditional(as_is), as_is  # the trigger is real
    simplified = cues(transcribe(base_model, clip, carried))
    text = "".join(s.text for s in simplified)
    assert text and not has_traditional(text), text
    # What is carried on is the simplified text, so the next window sees simplified context too.
    assert not has_traditional(tokenizer.decode([t for s in simplified for t in s.tokens if t < tokenizer.eot]))


def test_japanese_kanji_are_never_converted(base_model: Whisper) -> None:
    clip = FIXTURES / "picovoice_leopard_test_ja.flac"
    windows = transcribe(base_model, clip)
    text = "".join(s.text for s in cues(windows))
    assert windows[0].checkpoint.language == "ja"
    assert has_traditional(text), text  # kanji that a Chinese converter would change (観 → 观)…
    assert text == "".join(s.text for s in cues(transcribe(base_model, clip, chinese_script="as-is")))  # …untouched


def test_the_language_is_read_from_the_first_windows_own_encoding(base_model: Whisper) -> None:
    """Detecting the language costs no encoder pass of its own: one per window decoded, German
    and Japanese found (a third of a short clip's time, when it ran twice)."""
    passes: list[int] = []
    hook = base_model.encoder.register_forward_hook(lambda module, args, output: passes.append(len(output)))
    try:
        found = {name: transcribe(base_model, FIXTURES / f"picovoice_leopard_test_{name}.flac")
                 for name in ("de", "ja")}
    finally:
        hook.remove()
    assert {name: windows[0].checkpoint.language for name, windows in found.items()} == {"de": "de", "ja": "ja"}
    assert sum(passes) == sum(1 for windows in found.values() for w in windows if w.model_seconds > 0), passes


def test_translate_gives_english(base_model: Whisper) -> None:
    clip = FIXTURES / "picovoice_leopard_test_de.flac"  # "Der hinter diesem Portal liegenden Raum wurde als Leichenhalle genutzt."
    german = words(" ".join(s.text for s in cues(transcribe(base_model, clip))))
    english = words(" ".join(s.text for s in cues(transcribe(base_model, clip, task="translate"))))
    assert {"wurde", "als"} <= set(german), german  # transcribed, it is German…
    assert {"the", "was"} <= set(english) and not {"der", "wurde", "als", "raum"} & set(english), english  # …translated, English


def test_translate_with_an_english_only_model_is_a_config_error(fp32_model: Whisper) -> None:
    with pytest.raises(ConfigError, match="English-only"):
        Engine(fp32_model, DecodeSettings(task="translate"))


def test_worker_refuses_to_start_translating_with_an_english_only_model(cli: CliRunner) -> None:
    result = cli("work", "--exit-when-empty", check=False, timeout=180, env_extra={"WHISPER_DAEMON_TASK": "translate"})
    assert result.returncode == EXIT_CONFIG
    assert "translate" in result.stdout + result.stderr and "English-only" in result.stdout + result.stderr
