"""The `prompt` setting: names and terms the model is told on every window, not only the first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from whisper.model import Whisper

from daemon.config import ConfigError
from daemon.engine.transcribe import DecodeSettings, Engine
from daemon.transcript import Window
from tests.speech import Sentence, compose, sentences

pytestmark = pytest.mark.slow

VOCABULARY = Path(__file__).parent / "fixtures" / "vocabulary"  # tests/fixtures/make_vocabulary.py
FILLER_SECONDS = 27.0  # meeting sentences after each name: one name per 30 s window


def named_sentences() -> list[tuple[Sentence, list[str]]]:
    """The fixture sentences and the unusual words in each."""
    manifest = json.loads((VOCABULARY / "manifest.json").read_text())
    return [(Sentence(VOCABULARY / m["file"], m["text"], m["voice"], m["seconds"]), m["terms"]) for m in manifest]


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[float, list[str]]]]:
    """Each named sentence followed by ordinary meeting talk, so the names fall in three different
    windows with a window's worth of carried text between them. Returns the file and, per name,
    where it is spoken and its words."""
    fillers = iter(sentences())
    parts: list[Sentence | float] = []
    named: list[tuple[int, list[str]]] = []  # (index among the sentences, terms)
    for sentence, terms in named_sentences():
        named.append((sum(isinstance(p, Sentence) for p in parts), terms))
        parts.append(sentence)
        spoken = 0.0
        while spoken < FILLER_SECONDS - 5:
            filler = next(fillers)
            parts.append(filler)
            spoken += filler.seconds + 0.6
    rec = compose(parts)
    return rec.write(tmp_path_factory.mktemp("vocabulary") / "names.flac"), [(rec.spans[i][0], t) for i, t in named]


def found(windows: list[Window], terms: list[str], at: float) -> bool:
    """All `terms`, spelled right, in the cues that overlap the sentence spoken from `at` seconds (a
    cue may begin a few seconds earlier, with the end of the sentence before)."""
    text = " ".join(s.text for w in windows for s in w.segments if s.end > at and s.start <= at + 8)
    return all(term in text for term in terms)


PROMPT = "Siobhan Kwiatkowski, Quillfeather, Vantrelli"


def test_the_prompt_teaches_names_in_every_window(base_model: Whisper, recording: tuple[Path, list]) -> None:
    """With the default model, base. (tiny.en, told a prompt, tends to stop writing timestamps: the
    names come out right but in 30 s lines.)"""
    path, names = recording
    assert [at // 30 for at, _ in names] == [0, 1, 2]  # one name per window
    without = list(Engine(base_model, DecodeSettings()).windows(path))
    told = list(Engine(base_model, DecodeSettings(prompt=PROMPT)).windows(path))
    assert all(s.end - s.start < 10 for w in told for s in w.segments)  # timed lines, not whole windows
    assert not any(found(without, terms, at) for at, terms in names)  # the model cannot know them
    assert all(found(told, terms, at) for at, terms in names), [s.text for w in told for s in w.segments]


def test_resuming_with_a_prompt_gives_the_uninterrupted_result(fp32_model: Whisper, recording: tuple[Path, list]) -> None:
    path, _ = recording
    engine = Engine(fp32_model, DecodeSettings(prompt=PROMPT))
    windows = list(engine.windows(path))
    uninterrupted = [s for w in windows for s in w.segments]
    for stop_after in range(1, len(windows)):
        before = [s for w in windows[:stop_after] for s in w.segments]
        resumed = [s for w in engine.windows(path, windows[stop_after - 1].checkpoint) for s in w.segments]
        assert before + resumed == uninterrupted, f"differs when resuming after window {stop_after}"


def test_a_prompt_too_long_to_leave_room_for_context_is_refused(fp32_model: Whisper) -> None:
    with pytest.raises(ConfigError, match="prompt is .* tokens"):
        Engine(fp32_model, DecodeSettings(prompt="Quillfeather " * 60))
    assert Engine(fp32_model, DecodeSettings(prompt="Quillfeather " * 20))  # 20 names are fine
