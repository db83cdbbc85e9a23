"""`status` and `retry` as a person uses them: read-only, honest about gone workers, safe with
hostile file names, and clear about jobs that cannot be retried."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from daemon.queue.db import JobStatus, WorkerRow, WorkerState, connect, connect_readonly, utcnow, writing
from daemon.queue.db.sqlite import READ_PRAGMAS
from daemon.queue.jobs import JobQueue
from daemon.queue.registry import STALE_AFTER
from tests.conftest import HOLDER, CliRunner, claim, inbox_file, old_database


def _db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "jobs.db"


def _digest(db: Path) -> str:
    return "".join(hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(db.parent.glob(db.name + "*"))
                   if p.is_file())


def test_status_reads_without_the_write_lock_and_changes_nothing(tmp_path: Path, cli: CliRunner) -> None:
    db = _db(tmp_path)
    queue = JobQueue(connect(db))
    queue.enqueue(inbox_file(tmp_path, "a.wav"))
    queue.engine.dispose()
    writer = sqlite3.connect(db, timeout=0)
    writer.execute("BEGIN IMMEDIATE")  # another process holds the write lock for as long as status runs
    try:
        before = _digest(db)
        result = cli("status", timeout=60)
        assert "a.wav" in result.stdout and "queued" in result.stdout
        assert _digest(db) == before
    finally:
        writer.rollback()
        writer.close()


def test_status_does_not_upgrade_an_older_database(tmp_path: Path, cli: CliRunner) -> None:
    db = _db(tmp_path)
    db.parent.mkdir(parents=True)
    old_database(db, 0)
    before = _digest(db)
    result = cli("status", check=False, timeout=60)
    assert result.returncode == 1 and "start the watcher or worker" in result.stderr
    assert _digest(db) == before


def test_status_lists_every_file_of_a_job(tmp_path: Path, cli: CliRunner) -> None:
    queue = JobQueue(connect(_db(tmp_path)))
    job = queue.enqueue(inbox_file(tmp_path, "talk.wav")).job
    claim(queue)
    written = queue.reserve_outputs(job.id, HOLDER, tmp_path / "outbox", {"srt": "1", "txt": "2", "json": "3"})
    queue.finish(job.id, HOLDER, JobStatus.DONE)
    (line,) = [line for line in cli("status", timeout=60).stdout.splitlines() if "talk.wav" in line]
    assert line.endswith("  talk.srt, talk.txt, talk.json")
    (listed,) = json.loads(cli("status", "--json", timeout=60).stdout)["jobs"]
    assert listed["outputs"] == [str(written[fmt]) for fmt in ("srt", "txt", "json")]


def test_readonly_connections_have_their_pragmas(tmp_path: Path) -> None:
    connect(tmp_path / "jobs.db").dispose()
    engine = connect_readonly(tmp_path / "jobs.db")
    with engine.connect() as conn:
        got = {name: conn.exec_driver_sql(f"PRAGMA {name}").scalar() for name in READ_PRAGMAS}
    assert got == READ_PRAGMAS


def test_a_worker_without_heartbeat_shows_as_gone_and_names_cannot_break_the_table(
    tmp_path: Path, cli: CliRunner
) -> None:
    db = _db(tmp_path)
    queue = JobQueue(connect(db))
    queue.enqueue(inbox_file(tmp_path, "evil\nname\x1b[2J.wav"))
    job = claim(queue)
    assert job is not None
    with writing(queue.engine) as session:
        session.add(WorkerRow(id="0-crashed", pid=4242, host="mac", state=WorkerState.BUSY, current_job_id=job.id,
                              heartbeat_at=utcnow() - STALE_AFTER - timedelta(seconds=5)))
        session.add(WorkerRow(id="1-alive", pid=4343, host="mac", state=WorkerState.IDLE))
    table = cli("status", timeout=60).stdout
    lines = table.splitlines()
    crashed = next(line for line in lines if line.startswith("0-crashed"))
    alive = next(line for line in lines if line.startswith("1-alive"))
    assert " gone " in crashed and " busy " not in crashed and " idle " in alive
    (row,) = [line for line in lines if "evil" in line]  # one line, the escape sequence shown, not run
    assert "\\n" in row and "\\x1b" in row and "\x1b" not in table


def test_retry_says_why_a_job_cannot_be_retried(tmp_path: Path, cli: CliRunner) -> None:
    queue = JobQueue(connect(_db(tmp_path)))
    running = queue.enqueue(inbox_file(tmp_path, "a.wav")).job
    queued = queue.enqueue(inbox_file(tmp_path, "b.wav")).job
    failed = queue.enqueue(inbox_file(tmp_path, "c.wav")).job
    claim(queue)
    claim(queue)
    claim(queue)
    queue.release(queued.id, HOLDER)
    queue.fail(failed.id, HOLDER, "c.wav: bad")
    result = cli("retry", str(running.id), str(queued.id), str(failed.id), "999", check=False, timeout=60)
    assert result.returncode == 1
    assert f"job {running.id}: already running" in result.stderr
    assert f"job {queued.id}: already queued" in result.stderr
    assert "job 999: no such job" in result.stderr
    assert f"job {failed.id}: queued again" in result.stdout
    assert {j.id: j.status for j in queue.jobs()}[failed.id] == JobStatus.QUEUED


@pytest.mark.slow
def test_an_unexpected_error_names_the_log_file(tmp_path: Path, daemon_env: dict[str, str]) -> None:
    """An unexpected error cannot be produced on demand by a real file: the engine is made to raise one."""
    from daemon import config
    from daemon.processes.worker import Worker

    cfg = config.load({}, env=daemon_env)
    worker = Worker(cfg)
    worker.queue.enqueue(inbox_file(tmp_path, "a.wav"))
    worker.initialize()
    try:
        def explode(*args: object) -> object:
            raise RuntimeError("something nobody planned for")
        worker.engine.windows = explode  # type: ignore[union-attr, method-assign]
        assert worker.run_once()
    finally:
        worker.shutdown()
    (job,) = worker.queue.jobs()
    assert job.status == JobStatus.FAILED
    assert str(cfg.log_dir / "worker.log") in (job.error or "") and "something nobody planned for" in (job.error or "")
