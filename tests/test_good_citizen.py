"""The guards on a real worker with the real tiny.en model.

Memory pressure cannot be produced for real here, so the pressure spike is an injected memory
probe; the clock and waits are injected too, so nothing sleeps.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from daemon import config
from daemon.cli import _table, _workers_table
from daemon.processes.guards import MB, Guard, Memory
from daemon.processes.supervisor import EXIT_CONFIG, EXIT_TEMPFAIL
from daemon.processes.worker import Worker
from daemon.queue.db import JobStatus, WorkerState, utcnow
from daemon.queue.registry import workers
from tests.conftest import TEST_MODEL, CliRunner
from tests.daemon_proc import rows, srt_text
from tests.guard_fakes import FakeTime, memory_sequence
from tests.speech import SAMPLE_RATE, compose, meeting, write_audio

pytestmark = pytest.mark.slow


def test_pressure_spike_pauses_and_resumes_without_losing_a_segment(
    tmp_path: Path, daemon_env: dict[str, str]
) -> None:
    recording = meeting(95, seed=5)
    recording.write(tmp_path / "inbox" / "calm.wav")
    # The same samples, losslessly in another container: other bytes (not a duplicate), same audio.
    recording.write(tmp_path / "inbox" / "spiky.flac")
    cfg = config.load({}, env=daemon_env)
    worker = Worker(cfg)
    calm = worker.queue.enqueue(tmp_path / "inbox" / "calm.wav").job
    worker.initialize()
    assert worker.run_once() and worker.queue.jobs()[0].status == JobStatus.DONE

    spiky = worker.queue.enqueue(tmp_path / "inbox" / "spiky.flac").job
    t = FakeTime()
    seen: list[tuple[WorkerState, str]] = []

    def wait_and_look(seconds: float) -> bool:
        (row,) = workers(worker.queue.engine)
        seen.append((row.state, _workers_table([row], utcnow()) + "\n\n" + _table(worker.queue.jobs(), {})))
        return t.wait(seconds)

    plenty, tight = Memory(8000), Memory(300)
    # Readings: before the claim, batch sizing, after window 1, after window 2 (the spike, held for
    # three readings).
    readings = memory_sequence(plenty, plenty, plenty, tight, tight, tight, plenty)
    heat = iter([None, "thermal_zone0 at 96 °C, past its trip point"])  # hot once, after window 1
    worker.guard = Guard(worker.report, wait_and_look, memory=lambda: next(readings),
                         thermal=lambda: next(heat, None), clock=t.clock, low_memory_mb=cfg.min_available_mb)
    # Windows are timed in this process's CPU time: other jobs on a shared CI machine must not look
    # like a throttle here (the throttle has its own tests).
    worker.clock = time.process_time
    try:
        assert worker.run_once()
    finally:
        worker.shutdown()
    assert t.waits == [5.0, 5.0, 10.0, 20.0]  # one backoff; then paused at the spike until memory was back
    assert [state for state, _ in seen] == [WorkerState.BACKOFF] + [WorkerState.PAUSED] * 3
    print("status during the simulated backoff:\n" + seen[0][1])
    print("status during the simulated pause:\n" + seen[1][1])
    assert "96 °C" in seen[0][1] and "only 300 MB" in seen[1][1] and "running" in seen[1][1]
    jobs = {j.id: j for j in worker.queue.jobs()}
    job = jobs[spiky.id]
    assert job.status == JobStatus.DONE and job.attempts == 1
    (spiky_srt,), (calm_srt,) = worker.queue.outputs(job.id), worker.queue.outputs(calm.id)
    assert srt_text(spiky_srt) == srt_text(calm_srt)


def test_silence_then_speech_on_an_idle_machine_never_backs_off(tmp_path: Path, daemon_env: dict[str, str]) -> None:
    """5 minutes of silence, then 5 minutes of speech, on an idle machine: no back-off at all, and
    the workers table never shows `backoff`.

    Skipped silent windows take milliseconds; they must not teach the throttle guard a pace that
    makes every speech window look throttled. Whether a CPU is throttled cannot be chosen here
    (this machine is shared with other tests), so the worker times its windows with this process's
    CPU time, which is what the wall clock reads on an idle machine; the thermal and memory probes
    say the machine is cool and roomy, and waits are recorded instead of slept.
    """
    speech = meeting(300, seed=11)
    audio = np.concatenate([compose([300.0]).audio, speech.audio])
    write_audio(audio, tmp_path / "inbox" / "late start.wav")
    cfg = config.load({}, env=daemon_env)
    worker = Worker(cfg)
    job = worker.queue.enqueue(tmp_path / "inbox" / "late start.wav").job
    worker.initialize()
    t = FakeTime()
    worker.guard = Guard(worker.report, t.wait, memory=lambda: Memory(8000), thermal=lambda: None, clock=t.clock,
                         low_memory_mb=cfg.min_available_mb)
    worker.clock = time.process_time
    shown: list[str] = []  # the workers table as `status` prints it, after every heartbeat
    heartbeat = worker.registry.heartbeat

    def heartbeat_and_look(*args: object) -> None:
        heartbeat(*args)  # type: ignore[arg-type]
        shown.append(_shown(worker))

    worker.registry.heartbeat = heartbeat_and_look  # type: ignore[method-assign]
    try:
        assert worker.run_once()
    finally:
        worker.shutdown()
    assert t.waits == []
    states = {line.split()[3] for table in shown for line in table.splitlines()[1:]}  # WORKER HOST PID STATE
    assert states == {"busy", "idle"}, states
    done = {j.id: j for j in worker.queue.jobs()}[job.id]
    assert done.status == JobStatus.DONE and done.audio_seconds == pytest.approx(len(audio) / SAMPLE_RATE, abs=1)
    segments = worker.queue.segments(job.id)
    assert len(segments) > 20 and segments[0].start >= 299  # the speech was transcribed, none in the silence


def test_rss_cap_exits_with_the_recycle_code_after_the_job(tmp_path: Path, cli: CliRunner) -> None:
    meeting(20, seed=2).write(tmp_path / "inbox" / "a.wav")
    cli("enqueue", str(tmp_path / "inbox" / "a.wav"))
    result = cli("work", "--exit-when-empty", check=False, timeout=240,
                 env_extra={"WHISPER_DAEMON_MAX_RSS_MB": "50"})
    assert result.returncode == EXIT_TEMPFAIL, result.stderr
    (job,) = rows(tmp_path / "state" / "jobs.db")
    assert job["status"] == "done" and job["attempts"] == 1  # a recycle is not a crash of the job
    assert rows(tmp_path / "state" / "jobs.db", "SELECT * FROM workers") == []


def test_a_model_that_can_never_fit_is_a_config_error(cli: CliRunner) -> None:
    """Real memory: with min_available_mb set to all but 300 MB of this machine's memory, base can
    never be loaded, however long the worker waits: that is a configuration error (78)."""
    total_mb = psutil.virtual_memory().total / MB
    result = cli("work", check=False, timeout=180, env_extra={"WHISPER_DAEMON_MIN_AVAILABLE_MB": str(total_mb - 300),
                                                             "WHISPER_DAEMON_MODEL": "base"})
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert "can never fit" in result.stderr and "--model tiny" in result.stderr


def _shown(worker: Worker) -> str:
    """The workers table as `status` prints it now."""
    return _workers_table(workers(worker.queue.engine), utcnow())


def _waiting_worker(daemon_env: dict[str, str], t: FakeTime, *readings: Memory) -> tuple[Worker, list[str]]:
    """A worker whose memory probe (injected: a shortage cannot be produced for real) gives
    `readings`, and whose waits look at its row in the workers table, as `status` shows it."""
    cfg = config.load({}, env=daemon_env)
    worker = Worker(cfg)
    seen: list[str] = []

    def wait_and_look(seconds: float) -> bool:
        seen.append(_shown(worker))
        if t.wait(seconds):
            worker.stop.set()  # what SIGTERM does
            return True
        return False

    memory = memory_sequence(*readings)
    worker.guard = Guard(worker.report, wait_and_look, memory=lambda: next(memory), clock=t.clock,
                         low_memory_mb=cfg.min_available_mb)
    return worker, seen


def test_a_model_that_does_not_fit_yet_waits_paused_then_loads(daemon_env: dict[str, str]) -> None:
    """Not enough free memory at start-up is temporary: the worker shows itself paused with the
    reason, checks again with a growing (capped) wait, and loads the model once memory is back."""
    t = FakeTime()
    worker, seen = _waiting_worker(daemon_env, t, Memory(300), Memory(300), Memory(300), Memory(8000))
    worker.initialize()
    try:
        assert t.waits == [5.0, 10.0, 20.0]
        assert all("paused" in table and "only 300 MB" in table and TEST_MODEL in table for table in seen), seen
        (row,) = workers(worker.queue.engine)
        assert worker.engine is not None and row.state == WorkerState.IDLE and row.precision == worker.precision
    finally:
        worker.shutdown()


def test_a_stop_while_waiting_for_memory_ends_the_wait(daemon_env: dict[str, str]) -> None:
    """SIGTERM (the stop event) during the wait: initialize returns at once, without loading the model."""
    t = FakeTime()
    t.stop_after = 2
    worker, seen = _waiting_worker(daemon_env, t, Memory(300))
    worker.initialize()
    assert t.waits == [5.0, 10.0] and worker.engine is None
    worker.run()  # returns at once: nothing to do for a worker asked to stop
    worker.shutdown()
    assert workers(worker.queue.engine) == []
