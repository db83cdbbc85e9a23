"""Speaker labels (issue 23): the setting, the formats, the clustering and attribution, the probe,
and a real two-voice conversation (tests/fixtures/speakers) through the worker with the real model."""

from __future__ import annotations

import json
import os
import shutil
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import srt

from daemon import config
from daemon.config import ConfigError, speaker_bounds
from daemon.files.folders import SettingsError, check
from daemon.formats import render
from daemon.transcript import Segment, Transcript, Turn, Voice, Word
from tests.conftest import REPO, CliRunner
from tests.daemon_proc import checkpointed, rows, start, stop, wait_until
from tests.speech import real_speech, wer

FIXTURES = REPO / "tests" / "fixtures" / "speakers"
CONVERSATION = FIXTURES / "conversation.flac"
ALL_FORMATS = "srt,vtt,txt,json,tsv,rttm"
RULES = config.CueRules()


def _reference() -> list[tuple[float, float, str]]:
    """(start, end, speaker) of each turn of the committed conversation."""
    return [(float(f[3]), float(f[3]) + float(f[4]), f[7])
            for f in (line.split() for line in (FIXTURES / "conversation.rttm").read_text().splitlines())]


def _who(turns: list[tuple[float, float, str]], t: float) -> str:
    """The reference speaker at time t: the turn holding it, or the nearest one."""
    return min(turns, key=lambda turn: 0.0 if turn[0] <= t <= turn[1] else min(abs(t - turn[0]), abs(t - turn[1])))[2]


# --------------------------------------------------------------------------- the setting


@pytest.mark.parametrize(("value", "bounds"), [("auto", (1, config.MAX_SPEAKERS)), ("off", None), ("3", (3, 3)),
                                               ("2-6", (2, 6)), (" 2 - 6 ", (2, 6)), ("AUTO", (1, 20))])
def test_the_speakers_setting_is_auto_off_a_number_or_a_range(value: str, bounds: tuple[int, int] | None) -> None:
    assert speaker_bounds(value) == bounds


@pytest.mark.parametrize("value", ["0", "6-2", "many", "2-", "21", ""])
def test_a_wrong_speakers_setting_says_what_to_write(value: str) -> None:
    with pytest.raises(ConfigError, match="choose auto .* off, a number of speakers such as 3, or a range"):
        speaker_bounds(value)


def test_the_speakers_setting_comes_from_the_environment_and_folders(tmp_path: Path) -> None:
    env = {"WHISPER_DAEMON_SPEAKERS": "2-4", "WHISPER_DAEMON_INBOX": str(tmp_path / "in"),
           "WHISPER_DAEMON_OUTBOX": str(tmp_path / "out")}
    assert config.load({}, env=env).speakers == "2-4"
    assert config.load({}, env={k: v for k, v in env.items() if "SPEAKERS" not in k}).speakers == "auto"
    with pytest.raises(ConfigError, match="speakers is 'lots'"):
        config.load({}, env={**env, "WHISPER_DAEMON_SPEAKERS": "lots"})
    assert check({"speakers": "off"}, "memos/whisper-daemon.toml") == {"speakers": "off"}
    with pytest.raises(SettingsError, match="memos/whisper-daemon.toml: speakers is 'lots'"):
        check({"speakers": "lots"}, "memos/whisper-daemon.toml")


# --------------------------------------------------------------------------- the formats

def _w(start: float, end: float, text: str, speaker: str | None) -> Word:
    return Word(start, end, text, 0.9, speaker)


# Two people; the second segment is shared and has been split where the speaker changes (attribution.py).
TALK = Transcript((
    Segment(0.0, 1.6, "Shall we start?", words=(_w(0.0, 0.5, " Shall", "Speaker 1"), _w(0.5, 0.9, " we", "Speaker 1"),
                                               _w(0.9, 1.6, " start?", "Speaker 1")), speaker="Speaker 1"),
    Segment(1.8, 2.6, "Yes, please.", words=(_w(1.8, 2.2, " Yes,", "Speaker 2"), _w(2.2, 2.6, " please.", "Speaker 2")),
            speaker="Speaker 2"),
    Segment(2.7, 3.5, "Good.", words=(_w(2.7, 3.5, " Good.", "Speaker 1"),), speaker="Speaker 1"),
), "en", "tiny.en", 4.0, name="standup")


def test_every_format_names_the_speakers() -> None:
    cues = list(srt.parse(render("srt", TALK, RULES)))
    # A cue never holds two speakers' words, even with no pause between them, and starts with its
    # speaker's label where the speaker changes.
    assert [c.content for c in cues] == ["[Speaker 1] Shall we start?", "[Speaker 2] Yes, please.",
                                         "[Speaker 1] Good."]
    vtt = render("vtt", TALK, RULES)
    assert "<v Speaker 1>Shall we start?\n" in vtt and "<v Speaker 2>Yes, please.\n" in vtt
    assert render("txt", TALK, RULES) == "Speaker 1: Shall we start?\n\nSpeaker 2: Yes, please.\n\nSpeaker 1: Good.\n"
    document = json.loads(render("json", TALK, RULES))
    assert document["speakers"] == ["Speaker 1", "Speaker 2"]
    assert [s["speaker"] for s in document["segments"]] == ["Speaker 1", "Speaker 2", "Speaker 1"]
    assert [w["speaker"] for w in document["segments"][1]["words"]] == ["Speaker 2", "Speaker 2"]
    assert render("tsv", TALK, RULES).splitlines()[:2] == ["start\tend\ttext\tspeaker",
                                                           "0\t1600\tShall we start?\tSpeaker 1"]
    turns = (Turn(0.02, 1.55, "Speaker 1"), Turn(1.83, 2.58, "Speaker 2"), Turn(2.71, 3.4, "Speaker 1"))
    assert render("rttm", replace(TALK, turns=turns), RULES).splitlines() == [  # the prints' turns when known
        "SPEAKER standup 1 0.020 1.530 <NA> <NA> Speaker_1 <NA> <NA>",
        "SPEAKER standup 1 1.830 0.750 <NA> <NA> Speaker_2 <NA> <NA>",
        "SPEAKER standup 1 2.710 0.690 <NA> <NA> Speaker_1 <NA> <NA>"]
    assert render("rttm", TALK, RULES).splitlines() == [  # else the words' times
        "SPEAKER standup 1 0.000 1.600 <NA> <NA> Speaker_1 <NA> <NA>",
        "SPEAKER standup 1 1.800 0.800 <NA> <NA> Speaker_2 <NA> <NA>",
        "SPEAKER standup 1 2.700 0.800 <NA> <NA> Speaker_1 <NA> <NA>"]


def test_one_speakers_long_turn_keeps_its_label_once_in_srt() -> None:
    words = tuple(_w(i * 0.5, i * 0.5 + 0.4, f" word{i}.", "Speaker 2") for i in range(40))
    cues = list(srt.parse(render("srt", Transcript((Segment(0.0, 20.0, "", words=words, speaker="Speaker 2"),)),
                                 RULES)))
    assert len(cues) > 1 and cues[0].content.startswith("[Speaker 2] ")
    assert not any("Speaker" in c.content for c in cues[1:])


def _unlabelled(outputs: dict[str, str]) -> None:
    for fmt, text in outputs.items():
        if fmt == "rttm":  # who speaks when: all of it one speaker's
            assert {line.split()[7] for line in text.splitlines()} == {"Speaker_1"}, text
        else:
            assert "Speaker" not in text and "speaker" not in text, (fmt, text)


# --------------------------------------------------------------------------- clustering and attribution


def _voices(directions: list[int], seed: int = 0) -> list[Voice]:
    """1.5-s prints whose vectors point along the given axes, with noise: one axis, one person."""
    rng = np.random.default_rng(seed)
    out = []
    for i, axis in enumerate(directions):
        v = rng.normal(0, 0.03, 192)  # the noise as long as 0.4 of the axis: prints ~0.15 apart
        v[axis] += 1.0
        out.append(Voice(i * 1.5, i * 1.5 + 1.5, v.astype("<f4").tobytes()))
    return out


def test_words_go_to_speakers_by_time_and_a_shared_segment_is_split() -> None:
    from daemon.engine.speakers import attribution

    voices = _voices([3] * 4 + [7] * 4)  # one person for 6 s, another for 6 s
    words = tuple(_w(t, t + 0.4, f" w{k}", None) for k, t in enumerate(np.arange(4.0, 8.0, 0.5)))
    labelled, turns = attribution.labelled((Segment(4.0, 8.0, "".join(w.text for w in words).strip(), words=words),),
                                           voices, (1, 20))
    assert [s.speaker for s in labelled] == ["Speaker 1", "Speaker 2"]
    assert labelled[0].text == "w0 w1 w2 w3" and labelled[1].text == "w4 w5 w6 w7"
    assert (labelled[0].start, labelled[1].end) == (4.0, 8.0) and labelled[1].start == 6.0
    assert all(w.speaker == s.speaker for s in labelled for w in s.words)
    assert turns == (Turn(0.0, 6.0, "Speaker 1"), Turn(6.0, 12.0, "Speaker 2"))  # who spoke when, from the prints
    # One voice: no labels at all. A fixed number: that many speakers, even where auto hears one.
    assert attribution.labelled(labelled[:1], _voices([3] * 8), (1, 20)) == (labelled[:1], ())
    from daemon.engine.speakers import clustering
    assert len(set(clustering.cluster(_voices([3] * 4 + [7] * 4 + [11] * 4), (2, 2)).tolist())) == 2
    assert clustering.cluster(_voices([3] * 4 + [7] * 4 + [11] * 4), (1, 20)).tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_voice_prints_of_a_file_are_always_the_same_and_stop_when_asked() -> None:
    """The prints stand for every stretch of speech, are the same each time (a resumed job gets the
    same labels) and stop between two pieces of audio when the worker is asked to stop."""
    from threading import Event

    from daemon.engine.speakers.voices import Stopped, VoicePrinter

    printer = VoicePrinter()
    prints = printer.voices(CONVERSATION)
    assert printer.voices(CONVERSATION) == prints
    heard = sum(v.end - v.start for v in prints)
    assert 0.85 * sum(b - a for a, b, _ in _reference()) < heard, heard
    stop = Event()
    stop.set()
    with pytest.raises(Stopped):
        printer.voices(CONVERSATION, stop=stop)


def test_prints_made_from_the_transcriptions_speech_scores_match_those_made_alone() -> None:
    """The speaker pass reuses the speech probabilities the transcription computed (Window.speech),
    from wherever a resumed job started, and scores only what comes before: the prints are the
    same as those of a pass that scored the whole file itself."""
    from whisper.audio import HOP_LENGTH

    from daemon.engine import vad
    from daemon.engine.audio import SAMPLE_RATE
    from daemon.engine.feed import Feed
    from daemon.engine.speakers.voices import VoicePrinter

    piece = 6 * SAMPLE_RATE  # chunk_seconds = 6: several pieces, so a resume lands in the middle
    printer = VoicePrinter(piece)
    alone = printer.voices(CONVERSATION)
    for skip in (0, 3 * piece + 4800):  # from the start, and resumed 0.3 s into the fourth piece
        feed = Feed(CONVERSATION, piece, skip, vad.SpeechDetector(), 0.5)
        feed.fill(10 ** 9)
        assert printer.voices(CONVERSATION, heard=(skip // HOP_LENGTH, feed.probs)) == alone, skip


# --------------------------------------------------------------------------- the probe


SIGILL_WHY = "the speaker check was killed by SIGILL (an instruction this CPU does not have)"


@pytest.fixture
def sigill_env(tmp_path: Path) -> dict[str, str]:
    """An environment in which every new Python process dies of SIGILL as it starts, as one does
    that loads a library built for instructions its CPU lacks: a real signal, really delivered."""
    site = tmp_path / "sigill"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGILL)\n")
    return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{REPO}"}


def test_the_probe_says_why_when_its_child_dies(sigill_env: dict[str, str]) -> None:
    from daemon.engine.speakers import probe

    assert probe.failure() is None  # this CPU runs it
    assert probe.failure(sigill_env) == SIGILL_WHY


def test_a_yes_from_the_probe_is_remembered_and_a_no_is_asked_again(tmp_path: Path,
                                                                     sigill_env: dict[str, str]) -> None:
    """A start after the first skips the check's child (~3 s) on the same CPU, torch and code; the
    children of sigill_env would die, so a yes there can only be a remembered one."""
    from daemon.engine.remembered import FILE_NAME, Remembered
    from daemon.engine.speakers import probe

    remembered = Remembered(tmp_path)
    assert probe.failure(sigill_env, remembered) == SIGILL_WHY
    assert not (tmp_path / FILE_NAME).exists()  # a no is not kept: the next start asks again
    assert probe.failure(remembered=remembered) is None
    assert probe.failure(sigill_env, remembered) is None  # remembered: no child was started
    (key,) = json.loads((tmp_path / FILE_NAME).read_text())
    (tmp_path / FILE_NAME).write_text(json.dumps({key[::-1]: "works"}))  # another CPU's (or version's) answer
    assert probe.failure(sigill_env, remembered) == SIGILL_WHY


# --------------------------------------------------------------------------- end to end, with the real model


def _outputs(folder: Path, stem: str) -> dict[str, str]:
    return {fmt: (folder / f"{stem}.{fmt}").read_text(encoding="utf-8") for fmt in ALL_FORMATS.split(",")}


def _check_labels(outputs: dict[str, str]) -> None:
    """The conversation's files name its two people right: words, cues, paragraphs, turns."""
    turns = _reference()
    document = json.loads(outputs["json"])
    assert document["speakers"] == ["Speaker 1", "Speaker 2"]
    words = [w for s in document["segments"] for w in s["words"]]
    truth = {"Speaker 1": "lj", "Speaker 2": "s1089"}  # in order of first appearance
    right = sum(truth[w["speaker"]] == _who(turns, (w["start"] + w["end"]) / 2) for w in words)
    assert right / len(words) >= 0.95, (right, len(words))
    assert all(w["speaker"] == s["speaker"] for s in document["segments"] for w in s["words"])
    cues = list(srt.parse(outputs["srt"]))
    labels = [c.content.split("]")[0] + "]" for c in cues if c.content.startswith("[")]
    assert labels == ["[Speaker 1]", "[Speaker 2]", "[Speaker 1]", "[Speaker 2]"], outputs["srt"]
    paragraphs = outputs["txt"].strip().split("\n\n")
    assert [p.split(":")[0] for p in paragraphs] == ["Speaker 1", "Speaker 2", "Speaker 1", "Speaker 2"]
    assert outputs["vtt"].count("<v Speaker 1>") >= 2 and outputs["vtt"].count("<v Speaker 2>") >= 2
    assert {line.split("\t")[3] for line in outputs["tsv"].splitlines()[1:]} == {"Speaker 1", "Speaker 2"}
    rttm = [line.split() for line in outputs["rttm"].splitlines()]
    names = [f[7] for f in rttm]
    assert [n for i, n in enumerate(names) if i == 0 or n != names[i - 1]] == [
        "Speaker_1", "Speaker_2", "Speaker_1", "Speaker_2"]
    for f in rttm:  # each turn lies in one of its speaker's turns of the reference (pauses aside)
        begins, ends = float(f[3]), float(f[3]) + float(f[4])
        assert _who(turns, begins + 0.1) == _who(turns, ends - 0.1) == truth[f[7].replace("_", " ")], (f, turns)
    heard = sum(float(f[4]) for f in rttm)
    assert 0.85 * sum(b - a for a, b, _ in turns) < heard <= sum(b - a for a, b, _ in turns) + 0.5, heard
    text = " ".join(p.split(":", 1)[1] for p in paragraphs)
    assert wer((FIXTURES / "conversation.txt").read_text(), text) <= 0.25


@pytest.mark.slow
def test_a_conversation_gets_labels_a_memo_none_per_folder_and_duplicates(
    tmp_path: Path, daemon_env: dict[str, str], cli: CliRunner
) -> None:
    """Globally off (daemon_env); a meetings/ folder turns labels on, a memos/ folder keeps them off."""
    inbox = tmp_path / "inbox"
    for folder, value in (("meetings", "auto"), ("memos", "off")):
        (inbox / folder).mkdir()
        (inbox / folder / "whisper-daemon.toml").write_text(f'speakers = "{value}"\n')
    shutil.copy(CONVERSATION, inbox / "meetings" / "standup.flac")
    shutil.copy(CONVERSATION, inbox / "meetings" / "standup-copy.flac")  # the same content: a duplicate
    shutil.copy(CONVERSATION, inbox / "memos" / "note.flac")  # the same content, other settings: no twin
    _one_voice(inbox / "meetings" / "one-voice.wav")
    env = {"WHISPER_DAEMON_FORMATS": ALL_FORMATS}
    for name in ("meetings/standup.flac", "meetings/standup-copy.flac", "memos/note.flac", "meetings/one-voice.wav"):
        cli("enqueue", str(inbox / name), env_extra=env)
    cli("work", "--exit-when-empty", env_extra=env, timeout=600)
    jobs = {Path(j["path"]).name: j for j in rows(tmp_path / "state" / "jobs.db")}
    assert [jobs[n]["status"] for n in ("standup.flac", "standup-copy.flac", "note.flac", "one-voice.wav")] == [
        "done", "duplicate", "done", "done"], jobs
    out = tmp_path / "outbox"
    labelled = _outputs(out / "meetings", "standup")
    _check_labels(labelled)
    assert _outputs(out / "meetings", "standup-copy") == {  # rendered from the twin's kept voice prints
        fmt: text.replace("SPEAKER standup ", "SPEAKER standup-copy ") for fmt, text in labelled.items()}
    _unlabelled(_outputs(out / "memos", "note"))
    _unlabelled(_outputs(out / "meetings", "one-voice"))
    log = (tmp_path / "logs" / "worker.log").read_text()
    assert "2 speakers labelled" in log and "one voice: no labels" in log


def _one_voice(path: Path) -> None:
    """One reader (LJSpeech, committed in tests/fixtures/realspeech/en), three sentences."""
    from tests.speech import SAMPLE_RATE, read_audio, write_audio

    clips = [read_audio(c.audio) for c in real_speech("en") if c.audio.name.startswith("ljspeech")]
    pause = np.zeros(int(0.7 * SAMPLE_RATE), np.float32)
    write_audio(np.concatenate([x for c in clips for x in (c, pause)]), path)


@pytest.mark.slow
def test_resume_after_a_kill_gives_the_same_labels(
    tmp_path: Path, daemon_env: dict[str, str], cli: CliRunner
) -> None:
    env = {**daemon_env, "WHISPER_DAEMON_FORMATS": ALL_FORMATS, "WHISPER_DAEMON_SPEAKERS": "auto",
           "WHISPER_DAEMON_CHUNK_SECONDS": "6"}  # several windows: a kill lands between two of them
    shutil.copy(CONVERSATION, tmp_path / "inbox" / "standup.flac")
    cli("enqueue", str(tmp_path / "inbox" / "standup.flac"), env_extra=env)
    db = tmp_path / "state" / "jobs.db"
    worker = start("work", env)
    killed_at = wait_until(lambda: checkpointed(db), 120, "the first checkpoint", worker)["processed_seconds"]
    stop(worker, signal.SIGKILL)
    cli("work", "--exit-when-empty", env_extra=env)
    (job,) = rows(db)
    assert job["status"] == "done" and job["attempts"] == 2
    log = (tmp_path / "logs" / "worker.log").read_text()
    resumed_from = float(log.split("resuming standup.flac at ")[1].split(" s")[0])
    assert resumed_from >= killed_at - 0.05  # the transcription was not redone

    fresh = {**env, "WHISPER_DAEMON_DB": str(tmp_path / "fresh.db"), "WHISPER_DAEMON_OUTBOX": str(tmp_path / "fresh")}
    cli("enqueue", str(tmp_path / "inbox" / "standup.flac"), env_extra=fresh)
    cli("work", "--exit-when-empty", env_extra=fresh)
    resumed, uninterrupted = _outputs(tmp_path / "outbox", "standup"), _outputs(tmp_path / "fresh", "standup")
    assert resumed == uninterrupted
    _check_labels(resumed)


@pytest.mark.slow
def test_where_speaker_labelling_cannot_run_the_worker_transcribes_without_it(
    tmp_path: Path, daemon_env: dict[str, str], sigill_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe's child really dies of SIGILL (sigill_env); the worker, in this process, lives on."""
    from daemon.processes.worker import Worker

    # A cache folder without the check's yes from earlier tests (it is remembered): the check runs.
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(Path(daemon_env["WHISPER_DAEMON_CACHE_DIR"]) / "models")
    cfg = config.load({"formats": ALL_FORMATS}, env={**daemon_env, "WHISPER_DAEMON_SPEAKERS": "auto",
                                                     "WHISPER_DAEMON_CACHE_DIR": str(cache)})
    shutil.copy(CONVERSATION, tmp_path / "inbox" / "standup.flac")
    worker = Worker(cfg)
    worker.queue.enqueue(tmp_path / "inbox" / "standup.flac")
    monkeypatch.setenv("PYTHONPATH", sigill_env["PYTHONPATH"])  # for the children started from now on
    worker.initialize()  # checks speaker labelling: its setting wants labels
    try:
        assert worker.run_once()
    finally:
        worker.shutdown()
    (job,) = worker.queue.jobs()
    assert job.status.value == "done"
    assert worker.speakers.unavailable == SIGILL_WHY
    outputs = _outputs(tmp_path / "outbox", "standup")
    _unlabelled(outputs)
    assert wer((FIXTURES / "conversation.txt").read_text(), outputs["txt"]) <= 0.25
