"""Settings layers: defaults, then TOML, then environment, then command-line flags; and that every
process (children of `run`, services) and every test sees exactly the settings it was given."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from daemon import cli, config
from daemon.config import APP, Config, ConfigError, load
from daemon.formats.cues import CueRules
from tests.conftest import REPO, TEST_MODEL
from tests.daemon_proc import rows, start, stop, wait_until
from tests.speech import compose, sentences


def test_defaults_need_no_configuration(tmp_path: Path) -> None:
    cfg = load({}, env={})
    assert cfg.model == "base" and cfg.quiet_seconds == 2.0 and cfg.language is None
    assert cfg.inbox.is_absolute() and Path(cfg.db).is_absolute() and Path(cfg.db).name == "jobs.db"
    assert cfg.config is None and cfg.observer == "auto" and cfg.lease_seconds == 45


def test_the_queue_is_a_sqlite_path_or_a_postgresql_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = "postgresql://transcriber@nas.local:5432/queue"
    assert load({"db": url}, env={}).db == url  # as given: psycopg reads it
    assert load({"db": "postgres://u@h/q"}, env={}).db == "postgres://u@h/q"
    assert load({"db": "state/jobs.db"}, env={}).db == str(tmp_path / "state" / "jobs.db")
    assert load({"db": "sqlite:///state/jobs.db"}, env={}).db == str(tmp_path / "state" / "jobs.db")
    assert load({"db": "sqlite:////var/q/jobs.db"}, env={}).db == "/var/q/jobs.db"
    for wrong, says in [("mysql://u@h/q", "postgresql://user@host/dbname"), ("sqlite:jobs.db", "sqlite:////absolute")]:
        with pytest.raises(ConfigError, match=says):
            load({"db": wrong}, env={})


def test_observer_and_lease_are_checked() -> None:
    assert load({}, env={"WHISPER_DAEMON_OBSERVER": "polling"}).observer == "polling"
    with pytest.raises(ConfigError, match="observer is 'inotify': choose auto, native, polling"):
        load({}, env={"WHISPER_DAEMON_OBSERVER": "inotify"})
    with pytest.raises(ConfigError, match="lease_seconds is 2.0: give at least 10"):
        load({}, env={"WHISPER_DAEMON_LEASE_SECONDS": "2"})


def test_chunk_seconds_falls_on_the_10_ms_frames() -> None:
    assert load({"chunk_seconds": 12.34}, env={}).chunk_seconds == 12.34
    assert load({}, env={"WHISPER_DAEMON_CHUNK_SECONDS": "7.5"}).chunk_seconds == 7.5
    for wrong in (12.345, 29.999):
        with pytest.raises(ConfigError, match=f"chunk_seconds is {wrong}: give a whole number of hundredths"):
            load({"chunk_seconds": wrong}, env={})


def test_toml_then_env_then_cli(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('model = "tiny"\nquiet_seconds = 5\ninbox = "in-from-file"\nlanguage = "de"\n')
    env = {"WHISPER_DAEMON_MODEL": "small", "WHISPER_DAEMON_QUIET_SECONDS": "3"}
    cfg = load({"config": str(toml), "quiet_seconds": 1.5, "model": None}, env=env)
    assert cfg.model == "small"  # env beats file
    assert cfg.quiet_seconds == 1.5  # flag beats env
    assert cfg.inbox == Path("in-from-file").absolute()  # file beats default
    assert cfg.language == "de"


def test_config_file_from_env(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('model = "tiny.en"\n')
    assert load({}, env={"WHISPER_DAEMON_CONFIG": str(toml)}).model == "tiny.en"


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.model = "x"  # type: ignore[misc]


def test_empty_means_unset_only_where_a_setting_may_be_unset(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('language = "de"\nbeam_size = 5\n')
    cfg = load({"config": str(toml)}, env={"WHISPER_DAEMON_LANGUAGE": "", "WHISPER_DAEMON_BEAM_SIZE": "none"})
    assert cfg.language is None and cfg.beam_size is None  # "" and "none" unset an optional setting
    with pytest.raises(ConfigError, match="'quiet_seconds'"):
        load({}, env={"WHISPER_DAEMON_QUIET_SECONDS": ""})  # a number it needs: not silently None
    with pytest.raises(ConfigError, match="'model'"):
        load({}, env={"WHISPER_DAEMON_MODEL": ""})


def test_child_processes_get_the_same_settings(tmp_path: Path) -> None:
    """A child (or a service) given the parent's to_env() builds the parent's exact config, even when
    the default config file says otherwise."""
    default = config.default_config_file()
    default.parent.mkdir(parents=True)
    default.write_text('language = "de"\nbeam_size = 5\nmodel = "small"\n')
    chosen = tmp_path / "chosen.toml"
    chosen.write_text('model = "tiny.en"\nbeam_size = "none"\n')
    cfg = load({"config": str(chosen), "inbox": str(tmp_path / "i"), "outbox": str(tmp_path / "o"),
                "quiet_seconds": 0.5}, env={})
    assert (cfg.model, cfg.language, cfg.beam_size, cfg.config) == ("tiny.en", None, None, chosen)
    child = load({}, env=cfg.to_env())
    assert child == cfg and child.config == chosen

    without_file = load({}, env={"WHISPER_DAEMON_CONFIG": ""})  # "": no file at all, not the default
    assert without_file.config is None and without_file.language is None
    assert load({}, env=without_file.to_env()) == without_file
    assert load({}, env={}).config == default  # and with nothing said, the default file is read


@pytest.mark.parametrize(
    ("cli", "message"),
    [
        ({"inbox": "/tmp/x", "outbox": "/tmp/x/out"}, "inside the inbox"),
        ({"inbox": "/tmp/x", "outbox": "/tmp/x"}, "inside the inbox"),
        ({"quiet_seconds": "soon"}, "'quiet_seconds'"),
        ({"config": "/nonexistent/c.toml"}, "does not exist"),
    ],
)
def test_bad_settings_say_what_to_fix(cli: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(cli, env={})


def test_unknown_toml_key_is_named(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('modle = "tiny"\n')
    with pytest.raises(ConfigError, match="modle"):
        load({"config": str(toml)}, env={})


# ---------------------------------------------------------------- tests never read the developer's settings

HOSTILE_TEST = "test_the_tests_ignore_the_developers_own_settings"


def test_the_tests_ignore_the_developers_own_settings(tmp_path: Path) -> None:
    """Runs the quick settings tests as a developer whose own config.toml is broken and whose shell
    exports WHISPER_DAEMON_* variables: they must pass all the same."""
    home = tmp_path / "developer"
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    where = "import platformdirs, sys; print(platformdirs.user_config_dir(sys.argv[1]))"  # the platform's rule
    broken = Path(subprocess.run([sys.executable, "-c", where, APP], env=env, capture_output=True, text=True,
                                 check=True).stdout.strip()) / "config.toml"
    broken.parent.mkdir(parents=True)
    broken.write_text('model = "no-such-model"\nnot toml at all [\n')
    env.update(WHISPER_DAEMON_CONFIG=str(broken), WHISPER_DAEMON_MODEL="no-such-model",
               WHISPER_DAEMON_LANGUAGE="klingon", WHISPER_DAEMON_QUIET_SECONDS="soon",
               WHISPER_DAEMON_INBOX=str(home), WHISPER_DAEMON_OUTBOX=str(home / "out"))
    inner = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
         f"--basetemp={tmp_path / 'inner'}", "--deselect", f"tests/test_config.py::{HOSTILE_TEST}",
         "tests/test_config.py", "tests/test_service.py"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert inner.returncode == 0, inner.stdout[-4000:] + inner.stderr[-2000:]


# ---------------------------------------------------------------- one settings table for the subcommands

@pytest.mark.parametrize(("argv", "message"), [
    (["status", "--model", "tiny"],
     "whisper-daemon status: --model is not used by status; it is used by run, work, service install"),
    (["work", "--quiet-seconds", "3"],
     "whisper-daemon work: --quiet-seconds is not used by work; it is used by run, watch, service install"),
    (["watch", "--formats", "srt,vtt"],
     "whisper-daemon watch: --formats is not used by watch; it is used by run, work, service install"),
    (["retry", "--inbox", "x", "3"],
     "whisper-daemon retry: --inbox is not used by retry; it is used by run, watch, work, web, enqueue, migrate, "
     "service install"),
    (["enqueue", "--language", "de", "a.wav"],
     "whisper-daemon enqueue: --language is not used by enqueue; it is used by run, work, service install"),
    (["service", "stop", "--db", "x.db"],
     "whisper-daemon service stop: --db is not used by service stop; it is used by run, watch, work, status, web, "
     "enqueue, retry, migrate, service install"),
])
def test_a_flag_the_subcommand_would_ignore_is_refused(argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_run(*_: object) -> int:
        raise AssertionError(f"{argv} ran instead of being refused")

    for name in cli.COMMANDS:  # a refusal that broke must not start a worker or stop the user's services
        monkeypatch.setitem(cli.COMMANDS, name, must_not_run)
    assert cli.main(argv) == cli.EXIT_USAGE
    assert capsys.readouterr().err.strip() == message


def test_a_subcommand_takes_and_lists_the_flags_it_uses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "--db", str(tmp_path / "none.db"), "--config", ""]) == 0
    assert "no queue database" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        cli.main(["status", "--help"])
    usage = capsys.readouterr().out
    assert done.value.code == 0 and "--db" in usage and "--config" in usage
    assert "--model" not in usage and "--inbox" not in usage
    assert cli.main(["service", "install", "--dry-run", "--model", TEST_MODEL, "--inbox", str(tmp_path / "in"),
                     "--outbox", str(tmp_path / "out")]) == 0
    assert f'WHISPER_DAEMON_MODEL="{TEST_MODEL}"' in capsys.readouterr().out  # in the environment file


# ---------------------------------------------------------------- `run --config` reaches the watcher and the worker

@pytest.mark.slow
def test_run_hands_its_config_file_to_the_watcher_and_the_worker(tmp_path: Path, daemon_env: dict[str, str]) -> None:
    """`run --config chosen.toml` while the default config.toml (under the test's own HOME) says
    otherwise: the children must use chosen.toml's settings, down to the ones it leaves unset."""
    default = config.default_config_file()
    default.parent.mkdir(parents=True)
    default.write_text('model = "base"\nlanguage = "de"\nquiet_seconds = 3600\n')
    chosen = tmp_path / "chosen.toml"
    chosen.write_text(f'model = "{TEST_MODEL}"\nquiet_seconds = 0.5\n')  # language unset: detect
    env = {k: v for k, v in daemon_env.items() if k not in ("WHISPER_DAEMON_MODEL", "WHISPER_DAEMON_QUIET_SECONDS")}
    db = tmp_path / "state" / "jobs.db"
    compose(sentences()[:2]).write(tmp_path / "inbox" / "hello.wav")
    daemon = start("run", env, "--config", str(chosen), output=tmp_path / "run.out")
    try:
        (job,) = wait_until(lambda: [j for j in rows(db) if j["status"] in ("done", "failed")], 240,
                            "the recording transcribed", daemon)
        (worker,) = rows(db, "SELECT * FROM workers")
    finally:
        code, output = stop(daemon)
    assert code == 0, output
    assert job["status"] == "done", job
    assert (worker["model"], job["model"], job["language"]) == (TEST_MODEL, TEST_MODEL, "en"), output


@pytest.mark.parametrize(
    ("locale", "script"),
    [
        ({"LANG": "zh_TW.UTF-8"}, "traditional"),
        ({"LANG": "zh_HK.UTF-8"}, "traditional"),
        ({"LANG": "zh_CN.UTF-8"}, "simplified"),
        ({"LANG": "zh_SG"}, "simplified"),
        ({"LANG": "en_US.UTF-8"}, "simplified"),
        ({}, "simplified"),
        ({"LANG": "zh_CN.UTF-8", "LC_ALL": "zh_TW.UTF-8"}, "traditional"),  # LC_ALL overrides LANG
        ({"LANG": "zh_TW.UTF-8", "LC_MESSAGES": "en_GB.UTF-8"}, "simplified"),  # the messages' language decides
        ({"LANG": "en_US.UTF-8", "LC_ALL": ""}, "simplified"),  # set but empty counts as unset
    ],
)
def test_chinese_script_defaults_to_the_locales(locale: dict[str, str], script: str) -> None:
    """The default comes from the locale of the process that starts the daemon (an injected environment)."""
    assert load({}, env=locale).chinese_script == script


def test_chinese_script_given_beats_the_locale(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('chinese_script = "as-is"\n')
    assert load({"config": str(toml)}, env={"LANG": "zh_TW.UTF-8"}).chinese_script == "as-is"
    assert load({}, env={"LANG": "zh_TW.UTF-8", "WHISPER_DAEMON_CHINESE_SCRIPT": "simplified"}).chinese_script \
        == "simplified"
    # Child processes get the script the parent chose, whatever their own locale.
    cfg = load({}, env={"LANG": "zh_HK.UTF-8"})
    assert load({}, env={**cfg.to_env(), "LANG": "C"}) == cfg


def test_prompt_and_task_settings(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('prompt = "Anneliese Kwiatkowski, Zorbulator"\ntask = "translate"\n')
    cfg = load({"config": str(toml)}, env={})
    assert cfg.prompt == "Anneliese Kwiatkowski, Zorbulator" and cfg.task == "translate"
    assert load({}, env=cfg.to_env()) == cfg
    assert load({}, env={}).task == "transcribe" and load({}, env={}).prompt is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WHISPER_DAEMON_TASK": "translit"}, "task is 'translit'"),
        ({"WHISPER_DAEMON_CHINESE_SCRIPT": "hanzi"}, "chinese_script is 'hanzi'"),
    ],
)
def test_bad_task_or_script_is_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load({}, env=env)


# ---------------------------------------------------------------- output formats and cue rules

def test_formats_from_toml_env_and_flag(tmp_path: Path) -> None:
    assert load({}, env={}).formats == ("srt",)
    toml = tmp_path / "c.toml"
    toml.write_text('formats = ["srt", "vtt", "json"]\n')
    assert load({"config": str(toml)}, env={}).formats == ("srt", "vtt", "json")
    assert load({"config": str(toml)}, env={"WHISPER_DAEMON_FORMATS": "txt, TSV,"}).formats == ("txt", "tsv")
    assert load({"formats": "srt,vtt,txt,json,tsv"}, env={"WHISPER_DAEMON_FORMATS": "txt"}).formats == (
        "srt", "vtt", "txt", "json", "tsv")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("srt,docx", "'docx' is not a format whisper-daemon writes: choose one or more of srt, vtt, txt, json, tsv"),
        ("srt,vtt,srt", "names 'srt' twice"),
        (",", "formats is empty: choose one or more of srt, vtt, txt, json, tsv"),
        ("", "setting 'formats' needs a value"),
        (["srt", 2], "setting 'formats'"),
    ],
)
def test_bad_formats_say_the_choices(tmp_path: Path, value: object, message: str) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text(f"formats = {json.dumps(value)}\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load({"config": str(toml)}, env={})


def test_cue_settings_default_to_the_cue_rules_and_reach_them(tmp_path: Path) -> None:
    defaults = load({}, env={})
    assert config.cue_rules(defaults) == CueRules()
    toml = tmp_path / "c.toml"
    toml.write_text("cue_line_chars = 37\ncue_cjk_line_chars = 13\ncue_lines = 1\ncue_max_seconds = 6\n"
                    "cue_min_seconds = 1.5\ncue_chars_per_second = 17\ncue_gap_seconds = 0.1\n")
    assert config.cue_rules(load({"config": str(toml)}, env={})) == CueRules(
        line_chars=37, cjk_line_chars=13, lines=1, max_seconds=6.0, min_seconds=1.5, chars_per_second=17.0,
        gap_seconds=0.1)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WHISPER_DAEMON_CUE_LINES": "0"}, "cue_lines is 0: it must be more than 0 (default 2)"),
        ({"WHISPER_DAEMON_CUE_GAP_SECONDS": "-0.04"}, "cue_gap_seconds is -0.04: it must be more than 0"),
        ({"WHISPER_DAEMON_CUE_LINE_CHARS": "wide"}, "'cue_line_chars': 'wide' is not a valid int"),
        ({"WHISPER_DAEMON_CUE_MIN_SECONDS": "8"}, "cue_min_seconds (8.0) is longer than cue_max_seconds (7.0)"),
    ],
)
def test_bad_cue_settings_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load({}, env=env)


def test_formats_and_cue_settings_reach_child_processes(tmp_path: Path) -> None:
    cfg = load({"formats": "vtt,json,srt"}, env={"WHISPER_DAEMON_CUE_MIN_SECONDS": "1.25"})
    assert cfg.to_env()["WHISPER_DAEMON_FORMATS"] == "vtt,json,srt"  # as a flag or the environment takes it
    assert load({}, env=cfg.to_env()) == cfg
    assert load({}, env=Config().to_env()) == Config()  # 5/6 and 2/25 survive the trip as text


def test_formats_is_a_flag_of_work(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["work", "--help"])
    assert done.value.code == 0 and "--formats" in capsys.readouterr().out
