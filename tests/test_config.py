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
