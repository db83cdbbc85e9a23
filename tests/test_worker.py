"""The worker loop with the real tiny.en model: run_once, bad files, signals and crash recovery."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from daemon import config
from daemon.db import JobStatus
from daemon.supervisor import EXIT_CONFIG
from daemon.worker import Worker
from tests.conftest import CliRunner
from tests.daemon_proc import rows, srt_text, start, stop, wait_until
from tests.speech import compose, meeting, sentences, wer

pytestmark = pytest.mark.slow
LAUNCHD_EXIT_TIMEOUT = 20.0


def test_run_once_processes_jobs_in_order_and_survives_a_bad_file(
    tmp_path: Path, daemon_env: dict[str, str]
) -> None:
    cfg = config.load({}, env=daemon_env)
    good = compose(sentences()[12:15])
    good.write(tmp_path / "inbox" / "a.mp3")
    (tmp_path / "inbox" / "b.wav").write_bytes(b"RIFF\x00\x00 this is not really a wave file" * 100)
    good.write(tmp_path / "inbox" / "c.ogg")
    worker = Worker(cfg)
    for name in ("a.mp3", "b.wav", "c.ogg"):
        worker.queue.enqueue(tmp_path / "inbox" / name)
    worker.initialize()
    try:
        assert [worker.run_once() for _ in range(4)] == [True, True, True, False]
    finally:
        worker.shutdown()
    a, b, c = worker.queue.jobs()[::-1]
    assert a.status == JobStatus.DONE and c.status == JobStatus.DONE
    assert b.status == JobStatus.FAILED and b.error.startswith("b.wav: ")
    assert wer(good.text, srt_text(Path(c.srt_path))) <= 0.15


def test_exit_when_empty_drains_and_exits_zero(tmp_path: Path, cli: CliRunner) -> None:
    compose(sentences()[15:17]).write(tmp_path / "inbox" / "x.flac")
    cli("enqueue", str(tmp_path / "inbox" / "x.flac"))
    result = cli("work", "--exit-when-empty", timeout=240)
    assert result.returncode == 0
    (job,) = rows(tmp_path / "state" / "jobs.db")
    assert job["status"] == "done" and (tmp_path / "outbox" / "x.srt").stat().st_size > 0


def test_unknown_model_is_a_config_error_not_a_crash_loop(cli: CliRunner) -> None:
    result = cli("work", "--model", "no-such-model", check=False, timeout=120)
    assert result.returncode == EXIT_CONFIG
    assert "no-such-model" in result.stdout + result.stderr


def _long_job(tmp_path: Path, cli: CliRunner) -> Path:
    meeting(150, seed=3).write(tmp_path / "inbox" / "long.m4a")
    cli("enqueue", str(tmp_path / "inbox" / "long.m4a"))
    return tmp_path / "state" / "jobs.db"


def test_sigterm_mid_job_exits_zero_in_time_and_requeues(
    tmp_path: Path, daemon_env: dict[str, str], cli: CliRunner
) -> None:
    db = _long_job(tmp_path, cli)
    worker = start("work", daemon_env)
    wait_until(lambda: rows(db)[0]["status"] == "running", 120, "the job to start", worker)
    time.sleep(1.0)  # mid-job, not at its first window
    signalled = time.monotonic()
    code, output = stop(worker, signal.SIGTERM, timeout=LAUNCHD_EXIT_TIMEOUT)
    assert code == 0, output
    assert time.monotonic() - signalled < LAUNCHD_EXIT_TIMEOUT
    (job,) = rows(db)
    assert job["status"] == "queued" and job["attempts"] == 0, job
    assert not (tmp_path / "outbox" / "long.srt").exists()

    cli("work", "--exit-when-empty", timeout=300)
    (job,) = rows(db)
    assert job["status"] == "done" and job["attempts"] == 1


def test_sigkill_mid_job_is_recovered_on_restart(
    tmp_path: Path, daemon_env: dict[str, str], cli: CliRunner
) -> None:
    db = _long_job(tmp_path, cli)
    worker = start("work", daemon_env)
    wait_until(lambda: rows(db)[0]["status"] == "running", 120, "the job to start", worker)
    stop(worker, signal.SIGKILL)
    (job,) = rows(db)
    assert job["status"] == "running" and job["attempts"] == 1  # what a crash leaves behind

    cli("work", "--exit-when-empty", timeout=300)
    (job,) = rows(db)
    assert job["status"] == "done" and job["attempts"] == 2
    assert "recovered job" in (tmp_path / "logs" / "worker.log").read_text()
