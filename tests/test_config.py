"""Settings layers: defaults, then TOML, then environment, then command-line flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import Config, ConfigError, load


def test_defaults_need_no_configuration(tmp_path: Path) -> None:
    cfg = load({}, env={})
    assert cfg.model == "base" and cfg.quiet_seconds == 2.0 and cfg.language is None
    assert cfg.inbox.is_absolute() and cfg.db.name == "jobs.db"


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


def test_child_processes_get_the_same_settings(tmp_path: Path) -> None:
    cfg = load({"inbox": str(tmp_path / "i"), "outbox": str(tmp_path / "o"), "quiet_seconds": 0.5}, env={})
    assert load({}, env=cfg.to_env()) == cfg


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
    assert load({}, env={}).task == "transcribe" and load({}, env={}).prompt == ""


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
