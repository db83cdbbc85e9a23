"""Per-folder settings (issue 11): a `whisper-daemon.toml` in a folder of the inbox applies to the
recordings in it and below; the job stores the settings it was queued with; `status` shows the
language. The end-to-end test runs the real daemon (`run`: watcher and worker processes) with the
default multilingual model on real Mandarin and German speech.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.engine.chinese import convert
from daemon.files.folders import SETTINGS_FILE, SettingsError, settings_for
from daemon.queue.jobs import JobQueue
from tests.conftest import CliRunner, claim, inbox_file
from tests.daemon_proc import REPO, rows, settled, srt_text, start, stop, wait_until

FIXTURES = Path(__file__).parent / "fixtures" / "realspeech"
MANDARIN = FIXTURES / "aishell1_BAC009S0764W0121.flac"
GERMAN = FIXTURES / "picovoice_leopard_test_de.flac"


def write_settings(folder: Path, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SETTINGS_FILE).write_text(text, encoding="utf-8")


def test_a_settings_file_that_is_a_pipe_or_a_link_to_a_device_is_refused_at_once(tmp_path: Path) -> None:
    """Issue 22: a FIFO named whisper-daemon.toml (opening it waited for a writer for ever) or a link
    to /dev/zero (reading it filled the memory) is refused with a reason, at once. Read in a process
    of its own, with a deadline and 1 GB of address space, so that a regression fails the test
    instead of the machine; a folder of that name too."""
    inbox = tmp_path / "inbox"
    for folder in ("pipe", "zero", "folder"):
        (inbox / folder).mkdir(parents=True)
    os.mkfifo(inbox / "pipe" / SETTINGS_FILE)
    (inbox / "zero" / SETTINGS_FILE).symlink_to("/dev/zero")
    (inbox / "folder" / SETTINGS_FILE).mkdir()
    code = ("import resource, sys; from pathlib import Path; "
            "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); "
            "from daemon.files.folders import SettingsError, settings_for\n"
            "try:\n    settings_for(Path(sys.argv[1]), Path(sys.argv[2]))\n"
            "except SettingsError as e:\n    print(e)")
    for folder in ("pipe", "zero", "folder"):
        done = subprocess.run([sys.executable, "-c", code, str(inbox / folder / "a.wav"), str(inbox)], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert f"{inbox / folder / SETTINGS_FILE}: cannot read it (it is not a regular file" in done.stdout


def test_the_nearest_folder_wins_key_by_key(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    write_settings(inbox, 'language = "en"\nprompt = "Acme"\n')
    write_settings(inbox / "zh", 'language = "zh"\n')
    write_settings(inbox / "zh" / "tw", 'chinese_script = "traditional"\n')
    deep = inbox_file(tmp_path, "zh/tw/a.m4a")
    assert settings_for(deep, inbox) == {"language": "zh", "prompt": "Acme", "chinese_script": "traditional"}
    assert settings_for(inbox_file(tmp_path, "b.m4a"), inbox) == {"language": "en", "prompt": "Acme"}
    elsewhere = tmp_path / "elsewhere" / "c.m4a"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"c")
    assert settings_for(elsewhere, inbox) == {}  # named on the command line, outside the inbox


@pytest.mark.parametrize(("text", "message"), [
    ("language = zh", "cannot read it"),  # not TOML: a value needs quotes
    ('model = "large"', "model cannot be set per folder"),
    ("language = 1", 'language must be text in quotes'),
    ('task = "summarise"', "task is 'summarise': choose transcribe, or translate"),
    ('chinese_script = "cantonese"', "chinese_script is 'cantonese'"),
])
def test_a_wrong_settings_file_is_named_with_what_to_change(tmp_path: Path, text: str, message: str) -> None:
    write_settings(tmp_path / "inbox" / "team", text)
    with pytest.raises(SettingsError) as e:
        settings_for(inbox_file(tmp_path, "team/a.m4a"), tmp_path / "inbox")
    assert message in str(e.value) and str(tmp_path / "inbox" / "team" / SETTINGS_FILE) in str(e.value)


def test_a_job_keeps_the_settings_it_was_queued_with_until_it_is_retried(queue: JobQueue, tmp_path: Path) -> None:
    job = queue.enqueue(inbox_file(tmp_path, "a.m4a"), settings={"language": "zh"}).job
    assert json.loads(job.asked or "") == {"language": "zh"} and job.settings is None  # complete once started
    assert job.id is not None
    claim(queue)
    queue.fail(job.id, "test-worker", "a.m4a: cannot decode")
    (retried,) = queue.retry([job.id])
    assert retried.asked is None and retried.settings is None  # looked up again: the folder's file may be fixed


def test_the_settings_file_is_not_an_input(tmp_path: Path) -> None:
    from daemon.files.inputs import is_candidate, skipped_silently

    assert skipped_silently(tmp_path / SETTINGS_FILE) and not is_candidate(tmp_path / SETTINGS_FILE)


@pytest.mark.slow
def test_each_folder_transcribes_with_its_own_settings(tmp_path: Path, daemon_env: dict[str, str],
                                                       cli: CliRunner) -> None:
    """The same Mandarin recording in two folders gets each folder's script (so it is no duplicate of
    the other); a folder translates German into English; a folder with an unknown language and one
    with a broken file fail saying which file to fix; fixed and retried, the file is transcribed."""
    inbox, outbox, db = tmp_path / "inbox", tmp_path / "outbox", tmp_path / "state" / "jobs.db"
    mandarin = MANDARIN.read_bytes()
    write_settings(inbox / "繁體", 'chinese_script = "traditional"\n')
    write_settings(inbox / "to english", 'task = "translate"\n')
    write_settings(inbox / "klingon", 'language = "klingon"\n')
    write_settings(inbox / "broken", "language = zh\n")
    for name, data in {"a.flac": mandarin, "繁體/a.flac": mandarin, "to english/de.flac": GERMAN.read_bytes(),
                       "klingon/de.flac": GERMAN.read_bytes(), "broken/a.flac": mandarin}.items():
        (inbox / name).write_bytes(data)
    env = daemon_env | {"WHISPER_DAEMON_MODEL": "base", "WHISPER_DAEMON_QUIET_SECONDS": "0.5"}
    daemon = start("run", env, output=tmp_path / "run.out")
    try:
        jobs = {j["path"]: j for j in wait_until(lambda: settled(db, 5), 600, "five jobs to settle", daemon)}
        status = cli("status", env_extra=env).stdout

        simplified, traditional = srt_text(outbox / "a.srt"), srt_text(outbox / "繁體" / "a.srt")
        assert jobs["a.flac"]["status"] == jobs["繁體/a.flac"]["status"] == "done"  # not a duplicate of the other
        assert simplified and convert(simplified, "simplified") == simplified != convert(simplified, "traditional")
        assert traditional and convert(traditional, "traditional") == traditional != convert(traditional, "simplified")
        assert json.loads(jobs["繁體/a.flac"]["settings"])["chinese_script"] == "traditional"

        english = srt_text(outbox / "to english" / "de.srt").lower()
        assert "portal" in english and not {"der", "diesem", "wurde", "genutzt"} & set(english.replace(".", " ").split())
        assert jobs["to english/de.flac"]["language"] == "de"

        for folder, says in (("klingon", "'klingon' is not one Whisper knows"), ("broken", "cannot read it")):
            job = jobs[f"{folder}/{'de' if folder == 'klingon' else 'a'}.flac"]
            assert job["status"] == "failed" and says in job["error"] and SETTINGS_FILE in job["error"], job
        lines = {line.split()[0]: line for line in status.splitlines()[1:] if line[:1].isdigit()}
        assert " de→en " in lines[str(jobs["to english/de.flac"]["id"])]
        assert " zh " in lines[str(jobs["a.flac"]["id"])] and " zh " in lines[str(jobs["繁體/a.flac"]["id"])]

        write_settings(inbox / "broken", 'language = "zh"\n')  # fixed, then retried as the error says
        cli("retry", "--failed", env_extra=env)
        fixed = wait_until(lambda: rows(db, "SELECT * FROM jobs WHERE id = ? AND status = 'done'",
                                        (jobs["broken/a.flac"]["id"],)), 300, "the fixed folder's job", daemon)
        assert json.loads(fixed[0]["settings"])["language"] == "zh"
        assert srt_text(outbox / "broken" / "a.srt")
    finally:
        code, output = stop(daemon)
    assert code == 0, output
