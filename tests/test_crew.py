"""Two jobs at once in one worker process (processes/crew.py), with the real tiny.en model on real
and espeak-ng speech: each recording gets its own words, exactly those that one job at a time
writes in fp32, and a stop while both run leaves both to resume from their checkpoints."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import srt
import torch

from daemon import config
from daemon.engine.cores import Cores
from daemon.processes.crew import Crew
from daemon.processes.worker import Worker
from daemon.queue.db import Job, JobStatus
from tests.conftest import CliRunner
from tests.daemon_proc import rows, srt_text, start, stop, wait_until
from tests.speech import meeting, real_speech, wer

MAX_WER = 0.15  # the transcript is its own recording's
MIN_WER_OTHER = 0.6  # ...and clearly not another one's
LAUNCHD_EXIT_TIMEOUT = 20.0


def _overlapped(jobs: list[Job]) -> bool:
    """Whether some job started before another one finished."""
    spans = sorted((j.started_at, j.finished_at) for j in jobs)
    return any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))


@pytest.mark.slow
def test_two_jobs_at_once_write_what_one_at_a_time_writes(tmp_path: Path, daemon_env: dict[str, str]) -> None:
    inbox = tmp_path / "inbox"
    talks = {"a.m4a": meeting(70, seed=5), "b.flac": meeting(70, seed=6)}  # three windows each
    references = {name: talk.text for name, talk in talks.items()}
    for name, talk in talks.items():
        talk.write(inbox / name)
    for clip in real_speech("en")[:2]:
        shutil.copy(clip.audio, inbox / clip.audio.name)
        references[clip.audio.name] = clip.text
    names = sorted(references)

    crew = Crew(config.load({"precision": "fp32", "concurrency": "2"}, env=daemon_env), threading.Event())
    for name in names:
        crew.workers[0].queue.enqueue(inbox / name)
    crew.initialize()
    try:
        assert len(crew.workers) == 2
        crew.run(exit_when_empty=True)
    finally:
        crew.shutdown()
    jobs = crew.workers[0].queue.jobs()
    assert [j.status for j in jobs] == [JobStatus.DONE] * len(names)
    assert _overlapped(jobs), [(j.started_at, j.finished_at) for j in jobs]

    one_at_a_time = Worker(config.load({"precision": "fp32", "db": str(tmp_path / "one.db"),
                                        "outbox": str(tmp_path / "one-out")}, env=daemon_env))
    for name in names:
        one_at_a_time.queue.enqueue(inbox / name)
    one_at_a_time.initialize()
    try:
        while one_at_a_time.run_once():
            pass
    finally:
        one_at_a_time.shutdown()

    for name in names:
        at_once = list(srt.parse((tmp_path / "outbox" / Path(name).with_suffix(".srt")).read_text()))
        alone = list(srt.parse((tmp_path / "one-out" / Path(name).with_suffix(".srt")).read_text()))
        assert [(c.start, c.end, c.content) for c in at_once] == [(c.start, c.end, c.content) for c in alone], name
        text = " ".join(c.content for c in at_once)
        assert wer(references[name], text) <= MAX_WER, (name, text)
        assert all(wer(references[other], text) >= MIN_WER_OTHER for other in names if other != name), name


@pytest.mark.slow
def test_sigterm_while_two_jobs_run_leaves_both_to_resume(
    tmp_path: Path, daemon_env: dict[str, str], cli: CliRunner
) -> None:
    talks = {"long-a.m4a": meeting(150, seed=3), "long-b.m4a": meeting(150, seed=4)}
    for name, talk in talks.items():
        talk.write(tmp_path / "inbox" / name)
        cli("enqueue", str(tmp_path / "inbox" / name))
    db = tmp_path / "state" / "jobs.db"
    worker = start("work", {**daemon_env, "WHISPER_DAEMON_CONCURRENCY": "2"})

    def both_checkpointed() -> list[dict[str, object]] | None:
        jobs = rows(db, "SELECT * FROM jobs WHERE status = 'running' AND processed_seconds > 0")
        return jobs if len(jobs) == 2 else None

    running = wait_until(both_checkpointed, 180, "a checkpoint of each job", worker)
    assert len({job["holder"] for job in running}) == 2  # two workers of one process
    signalled = time.monotonic()
    code, output = stop(worker, signal.SIGTERM, timeout=LAUNCHD_EXIT_TIMEOUT)
    assert code == 0, output
    assert time.monotonic() - signalled < LAUNCHD_EXIT_TIMEOUT
    stopped = rows(db)
    assert [(job["status"], job["attempts"]) for job in stopped] == [("queued", 0)] * 2, stopped
    assert all(job["processed_seconds"] > 0 for job in stopped)

    cli("work", "--exit-when-empty", timeout=400)
    assert [job["status"] for job in rows(db)] == ["done"] * 2
    log = (tmp_path / "logs" / "worker.log").read_text()
    for job in stopped:
        name = Path(job["path"]).name
        assert f"resuming {name} at {job['processed_seconds']:.1f} s" in log
        text = srt_text(tmp_path / "outbox" / Path(name).with_suffix(".srt"))
        other = next(talk for other, talk in talks.items() if other != name)
        assert wer(talks[name].text, text) <= MAX_WER and wer(other.text, text) >= MIN_WER_OTHER, (name, text)


def test_a_job_alone_in_the_main_thread_gets_every_thread_and_one_beside_it_gets_one() -> None:
    cores = Cores(2)
    seen: dict[str, int] = {}

    def beside() -> None:
        with cores.job():
            cores.share()
            seen["beside"] = torch.get_num_threads()

    with cores.job():
        assert cores.share() == 1 and torch.get_num_threads() == 2  # alone, in the main thread
        second = threading.Thread(target=beside)
        second.start()
        second.join()
        with cores.job():  # another job beside this one while it runs
            assert cores.share() == 2 and torch.get_num_threads() == 1
    assert seen == {"beside": 1}
    assert cores.running == 0
