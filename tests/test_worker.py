"""The worker loop with the real tiny.en model: run_once, bad files, signals and crash recovery."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import srt

from daemon import config
from daemon.processes.supervisor import EXIT_CONFIG, EXIT_TEMPFAIL
from daemon.processes.worker import Worker
from daemon.queue.db import JobStatus
from daemon.queue.jobs import JobQueue
from tests.conftest import REPO, CliRunner
from tests.daemon_proc import checkpointed, rows, srt_text, start, stop, wait_until
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
    (srt_path,) = worker.queue.outputs(c.id)
    assert wer(good.text, srt_text(srt_path)) <= 0.15


def test_an_idle_worker_takes_over_a_job_whose_lease_ran_out(tmp_path: Path, daemon_env: dict[str, str]) -> None:
    """A worker on another machine took a job with a 3 s lease and vanished (its host name and pid
    mean nothing here). The lease runs out by the database's clock; the minute between recoveries
    is not waited for (recover_seconds: at every turn)."""
    talk = compose(sentences()[20:23])
    talk.write(tmp_path / "inbox" / "orphan.wav")
    worker = Worker(config.load({}, env=daemon_env))
    job = worker.queue.enqueue(tmp_path / "inbox" / "orphan.wav").job
    worker.initialize()
    try:
        gone_machine = JobQueue(worker.queue.engine, lease=timedelta(seconds=3), inbox=worker.queue.inbox)
        assert gone_machine.claim("7-a-mac-that-went-away").id == job.id
        worker.recover_seconds = 0.0
        assert not worker.run_once()  # the lease still holds: nobody else may touch the job
        deadline = time.monotonic() + 60
        while not worker.run_once():
            assert time.monotonic() < deadline, "the job was not taken over"
            time.sleep(0.2)
    finally:
        worker.shutdown()
    (done,) = worker.queue.jobs()
    assert done.status == JobStatus.DONE and done.attempts == 2
    (srt_path,) = worker.queue.outputs(done.id)
    assert wer(talk.text, srt_text(srt_path)) <= 0.15


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


def test_a_language_whisper_does_not_know_is_a_config_error(cli: CliRunner) -> None:
    result = cli("work", "--exit-when-empty", "--language", "klingon", check=False, timeout=120)
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "'klingon'" in result.stderr and "english" in result.stderr and " de," in result.stderr


def test_an_english_only_model_with_another_language_is_a_config_error(cli: CliRunner) -> None:
    result = cli("work", "--exit-when-empty", "--model", "tiny.en", "--language", "German", check=False,
                 timeout=120)
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "tiny.en is English-only" in result.stderr and "--model tiny" in result.stderr


def test_a_language_name_is_taken_as_its_code(daemon_env: dict[str, str]) -> None:
    worker = Worker(config.load({"language": "English"}, env=daemon_env))
    worker.initialize()
    try:
        assert worker.engine is not None and worker.engine.settings.language == "en"
    finally:
        worker.shutdown()


# The network probe is injected: a machine without network at boot cannot be produced for real here
# (and on a developer's machine the model would be downloaded).
OFFLINE_WORKER = """
import sys
from daemon.engine import weights
weights._network_reachable = lambda url, timeout: False
from daemon.cli import main
sys.exit(main(["work"]))
"""


def test_no_network_yet_for_a_model_to_download_exits_tempfail(tmp_path: Path, daemon_env: dict[str, str]) -> None:
    """First boot, network not up: `tiny` is in no cache and no installed package, and the network
    probe (injected) says the download server cannot be reached. The worker exits 75 so that the
    service manager starts it again later, and says so."""
    env = {**daemon_env, "WHISPER_DAEMON_MODEL": "tiny", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", OFFLINE_WORKER], env=env, cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == EXIT_TEMPFAIL, result.stderr
    assert "could not be downloaded" in result.stderr and "again later" in result.stderr


def _long_job(tmp_path: Path, cli: CliRunner) -> Path:
    meeting(150, seed=3).write(tmp_path / "inbox" / "long.m4a")
    cli("enqueue", str(tmp_path / "inbox" / "long.m4a"))
    return tmp_path / "state" / "jobs.db"


def test_sigterm_mid_job_keeps_a_checkpoint_and_exits_zero_in_time(
    tmp_path: Path, daemon_env: dict[str, str], cli: CliRunner
) -> None:
    db = _long_job(tmp_path, cli)
    worker = start("work", daemon_env)
    running = wait_until(lambda: checkpointed(db), 120, "the first checkpoint", worker)
    assert 0 < running["progress"] < 1
    status = cli("status").stdout  # progress is visible while it runs
    assert "running" in status and "%" in status and "ETA" in status, status
    signalled = time.monotonic()
    code, output = stop(worker, signal.SIGTERM, timeout=LAUNCHD_EXIT_TIMEOUT)
    assert code == 0, output
    assert time.monotonic() - signalled < LAUNCHD_EXIT_TIMEOUT
    (job,) = rows(db)
    assert job["status"] == "queued" and job["attempts"] == 0, job
    stopped_at = job["processed_seconds"]
    assert stopped_at >= running["processed_seconds"]
    segments = rows(db, "SELECT count(*) AS n FROM segments WHERE job_id = ?", (job["id"],))[0]["n"]
    assert segments > 0
    assert not (tmp_path / "outbox" / "long.srt").exists()

    cli("work", "--exit-when-empty", timeout=300)
    (job,) = rows(db)
    assert job["status"] == "done" and job["attempts"] == 1 and job["progress"] == 1.0
    assert f"resuming long.m4a at {stopped_at:.1f} s" in (tmp_path / "logs" / "worker.log").read_text()


def test_resume_after_sigkill_gives_the_same_srt_as_an_uninterrupted_run(
    tmp_path: Path, daemon_env: dict[str, str], cli: CliRunner
) -> None:
    db = _long_job(tmp_path, cli)
    worker = start("work", daemon_env)
    killed_at = wait_until(lambda: checkpointed(db), 120, "the first checkpoint", worker)["processed_seconds"]
    stop(worker, signal.SIGKILL)
    (job,) = rows(db)
    assert job["status"] == "running" and job["attempts"] == 1  # what a crash leaves behind

    cli("work", "--exit-when-empty", timeout=300)
    (job,) = rows(db)
    assert job["status"] == "done" and job["attempts"] == 2
    log = (tmp_path / "logs" / "worker.log").read_text()
    assert "recovered job" in log and "resuming long.m4a at" in log
    resumed_from = float(log.split("resuming long.m4a at ")[1].split(" s")[0])
    assert resumed_from >= killed_at - 0.05  # not from zero (the log rounds to 0.1 s)

    # The same recording, transcribed without interruption by a fresh queue.
    fresh = {"WHISPER_DAEMON_DB": str(tmp_path / "fresh.db"), "WHISPER_DAEMON_OUTBOX": str(tmp_path / "fresh-out")}
    (tmp_path / "inbox" / "long.m4a").rename(tmp_path / "inbox" / "again.m4a")
    cli("enqueue", str(tmp_path / "inbox" / "again.m4a"), timeout=60, env_extra=fresh)
    cli("work", "--exit-when-empty", env_extra=fresh)
    resumed = list(srt.parse((tmp_path / "outbox" / "long.srt").read_text()))
    uninterrupted = list(srt.parse((tmp_path / "fresh-out" / "again.srt").read_text()))
    assert [c.content for c in resumed] == [c.content for c in uninterrupted]
    assert [(c.start, c.end) for c in resumed] == [(c.start, c.end) for c in uninterrupted]
