"""The SQLite queue: pragmas, states, idempotent enqueue, atomic claims, crash recovery."""

from __future__ import annotations

import multiprocessing
import sqlite3
from datetime import timezone
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from daemon.db import PRAGMAS, JobStatus, connect
from daemon.queue import JobQueue
from tests.conftest import inbox_file


def test_every_connection_has_the_pragmas(tmp_path: Path) -> None:
    engine = connect(tmp_path / "jobs.db")
    conns = [engine.connect() for _ in range(3)]  # distinct pooled connections
    try:
        for conn in conns:
            got = {name: conn.exec_driver_sql(f"PRAGMA {name}").scalar() for name in PRAGMAS}
            assert got == {"journal_mode": "wal", "busy_timeout": 30_000, "synchronous": 1, "foreign_keys": 1}
    finally:
        for conn in conns:
            conn.close()


def test_database_file_is_owner_only(tmp_path: Path) -> None:
    connect(tmp_path / "jobs.db")
    assert (tmp_path / "jobs.db").stat().st_mode & 0o077 == 0


def test_status_column_rejects_unknown_states(queue: JobQueue, tmp_path: Path) -> None:
    queue.enqueue(inbox_file(tmp_path, "a.wav"))
    with pytest.raises(IntegrityError):
        with queue.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE jobs SET status = 'paused'")


def test_rows_are_readable_from_the_sqlite3_shell(queue: JobQueue, tmp_path: Path) -> None:
    queue.enqueue(inbox_file(tmp_path, "a.wav"))
    ro = sqlite3.connect(f"file:{tmp_path / 'jobs.db'}?mode=ro", uri=True)
    status, created = ro.execute("SELECT status, created_at FROM jobs").fetchone()
    assert status == "queued"
    assert created.endswith("+00:00")  # timezone-aware UTC, as text


def test_enqueue_is_idempotent_for_the_same_file(queue: JobQueue, tmp_path: Path) -> None:
    path = inbox_file(tmp_path, "a.wav")
    first = queue.enqueue(path)
    again = queue.enqueue(path)
    assert first.created and not again.created
    assert again.job.id == first.job.id
    assert len(queue.jobs()) == 1
    assert first.job.created_at.tzinfo == timezone.utc


def test_new_content_at_the_same_path_is_transcribed_again(queue: JobQueue, tmp_path: Path) -> None:
    path = inbox_file(tmp_path, "a.wav", b"first take")
    job = queue.enqueue(path).job
    assert queue.claim().id == job.id
    queue.finish(job.id, JobStatus.DONE)
    path.write_bytes(b"second take, longer")
    again = queue.enqueue(path)
    assert again.created and again.job.id != job.id
    assert again.job.srt_path == job.srt_path  # replaces its own transcript


def test_replaced_before_claim_updates_the_queued_row(queue: JobQueue, tmp_path: Path) -> None:
    path = inbox_file(tmp_path, "a.wav", b"first")
    first = queue.enqueue(path).job
    path.write_bytes(b"second version")
    second = queue.enqueue(path).job
    assert second.id == first.id and second.sha256 != first.sha256
    assert len(queue.jobs()) == 1


def test_colliding_names_are_disambiguated(queue: JobQueue, tmp_path: Path) -> None:
    a = queue.enqueue(inbox_file(tmp_path, "meeting.m4a", b"one")).job
    b = queue.enqueue(inbox_file(tmp_path, "meeting.mp3", b"two")).job
    c = queue.enqueue(inbox_file(tmp_path, "other.wav", b"three")).job
    assert Path(a.srt_path).name == "meeting.srt"
    assert Path(b.srt_path).name == "meeting (2).srt"
    assert Path(c.srt_path).name == "other.srt"
    assert Path(a.srt_path).parent == tmp_path / "outbox"


def test_claim_is_fifo_and_sets_running(queue: JobQueue, tmp_path: Path) -> None:
    ids = [queue.enqueue(inbox_file(tmp_path, f"{i}.wav", bytes([i]))).job.id for i in range(3)]
    job = queue.claim()
    assert job is not None and job.id == ids[0]
    assert job.status == JobStatus.RUNNING and job.attempts == 1 and job.started_at is not None


def test_same_content_waits_while_its_twin_runs(queue: JobQueue, tmp_path: Path) -> None:
    first = queue.enqueue(inbox_file(tmp_path, "a.wav", b"same")).job
    queue.enqueue(inbox_file(tmp_path, "b.wav", b"same"))
    assert queue.claim().id == first.id
    assert queue.claim() is None  # b must not be transcribed in parallel with a
    queue.finish(first.id, JobStatus.DONE)
    twin_job = queue.claim()
    assert twin_job is not None and queue.finished_twin(twin_job).id == first.id


def _claim_all(db: str, outbox: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue = JobQueue(connect(Path(db)), Path(outbox))
    claimed = []
    while (job := queue.claim()) is not None:
        claimed.append(job.id)
    out.put(claimed)


def test_concurrent_claims_never_hand_out_a_job_twice(queue: JobQueue, tmp_path: Path) -> None:
    for i in range(60):
        queue.enqueue(inbox_file(tmp_path, f"{i}.wav", i.to_bytes(2, "big")))
    out: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()  # type: ignore[type-arg]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_claim_all, args=(str(tmp_path / "jobs.db"), str(tmp_path / "outbox"), out))
             for _ in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    claimed = [job_id for r in results for job_id in r]
    assert sorted(claimed) == sorted(j.id for j in queue.jobs(limit=100))
    assert len(claimed) == len(set(claimed)) == 60


def test_recover_requeues_then_fails_after_max_attempts(queue: JobQueue, tmp_path: Path) -> None:
    job = queue.enqueue(inbox_file(tmp_path, "crashy.wav")).job
    for attempt in (1, 2):
        claimed = queue.claim()
        assert claimed.id == job.id and claimed.attempts == attempt
        # A crash leaves the row running; the next worker's start-up recovers it.
        (recovered,) = queue.recover(max_attempts=3)
        assert recovered.status == JobStatus.QUEUED and recovered.attempts == attempt
    queue.claim()
    (gave_up,) = queue.recover(max_attempts=3)
    assert gave_up.status == JobStatus.FAILED
    assert "3 times" in gave_up.error
    assert queue.claim() is None


def test_release_does_not_count_the_interrupted_attempt(queue: JobQueue, tmp_path: Path) -> None:
    job = queue.enqueue(inbox_file(tmp_path, "a.wav")).job
    queue.claim()
    queue.release(job.id)
    (row,) = queue.jobs()
    assert row.status == JobStatus.QUEUED and row.attempts == 0


def test_retry_failed(queue: JobQueue, tmp_path: Path) -> None:
    job = queue.enqueue(inbox_file(tmp_path, "a.wav")).job
    queue.claim()
    queue.fail(job.id, "bad")
    (retried,) = queue.retry(failed=True)
    assert retried.status == JobStatus.QUEUED and retried.error is None and retried.attempts == 0
    assert queue.retry([12345]) == []
