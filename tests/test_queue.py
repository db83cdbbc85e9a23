"""The queue, on SQLite and on a real PostgreSQL server (the `queue` fixture runs each test on both):
states, idempotent enqueue, leased claims, recovery, output names; SQLite's pragmas and upgrades."""

from __future__ import annotations

import errno
import multiprocessing
import os
import sqlite3
import time
import unicodedata
from collections.abc import Callable
from datetime import timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from daemon.files.inputs import fingerprint
from daemon.formats import FORMATS
from daemon.queue.db import HEAD, Job, JobStatus, connect, storage_error, utcnow, version
from daemon.queue.db.sqlite import PRAGMAS, SCHEMA_VERSION
from daemon.queue.jobs import LEASE, JobQueue, LeaseLost
from daemon.transcript import Checkpoint, Segment, Window, Word
from tests.conftest import HOLDER, CliRunner, claim, inbox_file, old_database
from tests.daemon_proc import rows

HELLO_SHA256 = "12998c017066eb0d2a70b94e6ed3192985855ce390f321bbdb832022888bd251"  # of "hello there": queue_v1.sql's


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The queue's database, each backend in turn."""
    return str(tmp_path / "jobs.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")


@pytest.fixture
def queue(db: str) -> JobQueue:
    return JobQueue(connect(db))


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


SQLITE_ONLY = pytest.mark.parametrize("db", ["sqlite"], indirect=True)


@SQLITE_ONLY
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
    assert claim(queue).id == job.id
    queue.finish(job.id, HOLDER, JobStatus.DONE)
    path.write_bytes(b"second take, longer")
    again = queue.enqueue(path)
    assert again.created and again.job.id != job.id


def test_replaced_before_claim_updates_the_queued_row(queue: JobQueue, tmp_path: Path) -> None:
    path = inbox_file(tmp_path, "a.wav", b"first")
    first = queue.enqueue(path).job
    path.write_bytes(b"second version")
    second = queue.enqueue(path).job
    assert second.id == first.id and second.sha256 != first.sha256
    assert len(queue.jobs()) == 1


def test_copied_in_again_after_it_was_done_is_a_new_job_but_a_rescan_is_not(queue: JobQueue, tmp_path: Path) -> None:
    path = inbox_file(tmp_path, "a.wav", b"take")
    job = queue.enqueue(path).job
    claim(queue)
    queue.finish(job.id, HOLDER, JobStatus.DONE)
    assert not queue.enqueue(path).created  # a rescan: nobody touched it
    path.unlink()
    inbox_file(tmp_path, "a.wav", b"take")  # the same recording copied in again
    os.utime(path, ns=(job.mtime_ns + 10**9, job.mtime_ns + 10**9))
    again = queue.enqueue(path)
    assert again.created and again.job.sha256 == job.sha256


def test_a_refusal_of_a_file_its_job_already_accounts_for_adds_no_row(queue: JobQueue, tmp_path: Path) -> None:
    """A rescan finds a queued file made unreadable (chmod keeps size and mtime): the job it has is
    failed by the worker when its turn comes, so one file stays one job. (Root reads any file, so
    the watcher's refusal is made the way the watcher makes it.)"""
    path = inbox_file(tmp_path, "a.wav")
    job = queue.enqueue(path).job
    assert queue.reject(path, "cannot read the file: Permission denied").job.id == job.id  # still queued
    claim(queue)
    queue.fail(job.id, HOLDER, "a.wav: cannot read the file: Permission denied")
    assert queue.reject(path, "cannot read the file: Permission denied").job.id == job.id
    assert queue.reject(path, "it is a symbolic link").job.id == job.id  # same size and mtime: same file
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere.wav")  # really replaced: a new job says why it is refused now
    assert queue.reject(path, "it is a symbolic link").created
    assert len(queue.jobs()) == 2


def test_two_spellings_of_one_file_are_one_job(queue: JobQueue, tmp_path: Path) -> None:
    path = inbox_file(tmp_path, "t.wav")
    (tmp_path / "inbox" / "sub").mkdir()
    first = queue.enqueue(tmp_path / "inbox" / "sub" / ".." / "t.wav")
    second = queue.enqueue(path)
    assert first.created and not second.created and first.job.id == second.job.id
    assert first.job.path == str(path)


def test_enqueue_follows_a_link_only_when_asked(queue: JobQueue, tmp_path: Path) -> None:
    target = inbox_file(tmp_path, "real.wav")
    link = tmp_path / "elsewhere" / "link.wav"
    link.parent.mkdir()
    link.symlink_to(target)
    assert queue.enqueue(link, follow_link=True).job.path == str(target)  # `whisper-daemon enqueue link.wav`
    assert queue.reject(link, "a link").job.path == str(link)  # found in the inbox: refused as itself


def test_enqueue_refuses_a_pipe_a_folder_and_a_name_that_is_not_utf8_plainly(tmp_path: Path, cli: CliRunner,
                                                                             daemon_env: dict[str, str]) -> None:
    """Issue 22: `enqueue` gives the watcher's refusal, with no traceback and no hang (a FIFO used to
    block in the hash, a folder said "Is a directory", a Latin-1 name ended in a traceback), also
    through a link the user names; nothing is queued."""
    pipe = tmp_path / "pipe.wav"
    os.mkfifo(pipe)
    folder = tmp_path / "folder.mp3"
    folder.mkdir()
    latin = os.fsencode(tmp_path) + b"/caf\xe9.mp3"
    with open(latin, "wb") as f:
        f.write(b"audio")
    link = tmp_path / "link to pipe.wav"
    link.symlink_to(pipe)
    expected = {pipe: "it is not a regular file", folder: "it is not a regular file",
                Path(os.fsdecode(latin)): "its name is not valid UTF-8", link: "it is not a regular file"}
    for path, reason in expected.items():
        proc = cli("enqueue", os.fsdecode(path), check=False, timeout=60)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert ": not queued: " in proc.stderr and reason in proc.stderr
    assert "caf\\xe9.mp3: not queued" in cli("enqueue", os.fsdecode(latin), check=False).stderr  # shown escaped
    assert rows(Path(daemon_env["WHISPER_DAEMON_DB"])) == []


def test_a_daemon_older_than_its_database_says_so_and_exits_78(tmp_path: Path, cli: CliRunner,
                                                               daemon_env: dict[str, str]) -> None:
    """Issue 22: a database a newer whisper-daemon migrated (a revision this one does not know) gets
    the SchemaMismatch message and exit 78 (a configuration error: not restarted), not an Alembic
    traceback; the database is left as it is."""
    db = Path(daemon_env["WHISPER_DAEMON_DB"])
    connect(db).dispose()
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099'")
    conn.close()
    recording = inbox_file(tmp_path, "a.wav")
    for command in (["watch"], ["work"], ["enqueue", str(recording)], ["retry", "--failed"]):
        done = cli(*command, check=False, timeout=120)
        said = done.stdout + done.stderr
        assert done.returncode == 78 and "Traceback" not in said, (command, said)
        assert f"has schema 0099, which this whisper-daemon (schema {HEAD}) does not know" in said
        assert "Upgrade whisper-daemon" in said
    assert rows(db, "SELECT version_num FROM alembic_version") == [{"version_num": "0099"}]


def test_claim_is_fifo_and_sets_running_under_a_lease(queue: JobQueue, tmp_path: Path) -> None:
    ids = [queue.enqueue(inbox_file(tmp_path, f"{i}.wav", bytes([i]))).job.id for i in range(3)]
    job = claim(queue)
    assert job is not None and job.id == ids[0]
    assert job.status == JobStatus.RUNNING and job.attempts == 1 and job.started_at is not None
    # The lease is the database's time (started_at is the machine's: the same clock here, to the tick).
    assert job.holder == HOLDER and abs(job.lease_until - (job.started_at + LEASE)) < timedelta(seconds=5)


def test_same_content_waits_while_its_twin_runs(queue: JobQueue, tmp_path: Path) -> None:
    first = queue.enqueue(inbox_file(tmp_path, "a.wav", b"same")).job
    queue.enqueue(inbox_file(tmp_path, "b.wav", b"same"))
    assert claim(queue).id == first.id
    assert claim(queue) is None  # b must not be transcribed in parallel with a
    queue.finish(first.id, HOLDER, JobStatus.DONE, model="tiny.en")
    twin_job = claim(queue)
    assert twin_job is not None and queue.finished_twin(twin_job, "tiny.en").id == first.id
    assert queue.finished_twin(twin_job, "base") is None  # another model's words are not reused


def test_unknown_content_never_waits_and_is_never_a_twin(queue: JobQueue, tmp_path: Path) -> None:
    """Refused files are stored without a hash (""): retried together, each is read on its own."""
    for name in ("a.wav", "b.wav"):
        queue.reject(inbox_file(tmp_path, name), "cannot read the file")
    assert len(queue.retry(failed=True)) == 2
    a, b = claim(queue), claim(queue)
    assert a is not None and b is not None  # b did not wait behind a's (empty) hash
    queue.finish(a.id, HOLDER, JobStatus.DONE, model="tiny.en")
    assert queue.finished_twin(b, "tiny.en") is None


def _claim_all(db: str, holder: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue = JobQueue(connect(db))
    claimed = []
    while (job := queue.claim(holder)) is not None:
        claimed.append(job.id)
    out.put(claimed)


def test_concurrent_claims_never_hand_out_a_job_twice(queue: JobQueue, db: str, tmp_path: Path) -> None:
    for i in range(60):
        queue.enqueue(inbox_file(tmp_path, f"{i}.wav", i.to_bytes(2, "big")))
    out: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()  # type: ignore[type-arg]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_claim_all, args=(db, f"w{i}", out)) for i in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    claimed = [job_id for r in results for job_id in r]
    assert sorted(claimed) == sorted(j.id for j in queue.jobs(limit=100))
    assert len(claimed) == len(set(claimed)) == 60
    assert {j.holder for j in queue.jobs(limit=100)} <= {f"w{i}" for i in range(4)}


def test_recover_requeues_then_fails_after_max_attempts(queue: JobQueue, tmp_path: Path) -> None:
    job = queue.enqueue(inbox_file(tmp_path, "crashy.wav")).job
    for attempt in (1, 2):
        claimed = claim(queue)
        assert claimed.id == job.id and claimed.attempts == attempt
        # A crash leaves the row running; the same worker, restarted in its slot, takes it back.
        (recovered,) = queue.recover(HOLDER, max_attempts=3)
        assert recovered.status == JobStatus.QUEUED and recovered.attempts == attempt
        assert recovered.holder is None and recovered.lease_until is None
    claim(queue)
    (gave_up,) = queue.recover(HOLDER, max_attempts=3)
    assert gave_up.status == JobStatus.FAILED
    assert "3 times" in gave_up.error
    assert claim(queue) is None


def test_only_an_expired_lease_lets_another_worker_requeue_a_job(db: str, tmp_path: Path) -> None:
    """A lease of 2 s, waited for by the database's clock."""
    lease = timedelta(seconds=2)
    queue = JobQueue(connect(db), lease=lease)
    job = queue.enqueue(inbox_file(tmp_path, "a.wav")).job
    claim(queue)
    assert queue.recover("another worker") == []  # the holder is alive as far as anyone can tell
    renewed = time.monotonic()
    assert queue.renew(job.id, HOLDER)  # its heartbeat
    recovered = _poll(lambda: queue.recover("another worker"), 30)
    assert time.monotonic() - renewed >= lease.total_seconds() - 0.1  # not before the renewed lease ran out
    assert [j.status for j in recovered] == [JobStatus.QUEUED]
    taken = queue.claim("another worker")
    assert taken is not None and taken.id == job.id
    # The first worker wakes up (a laptop lid opened): it cannot write for the job any more.
    window = Window((Segment(0.0, 1.0, "stale words"),), Checkpoint(30.0), 30.0, 30.0)
    with pytest.raises(LeaseLost):
        queue.save_window(job.id, HOLDER, window, 60.0, 0.1, "tiny.en", "fp32")
    with pytest.raises(LeaseLost):
        queue.finish(job.id, HOLDER, JobStatus.DONE)
    assert not queue.renew(job.id, HOLDER)
    assert queue.segments(job.id) == []


def test_leases_are_judged_by_the_databases_clock_not_each_machines(db: str, tmp_path: Path) -> None:
    """Another machine whose clock is an hour fast (its clock injected: a machine's clock cannot be
    set wrong for real here) neither takes a live job nor gives out a lease that outlives its
    worker; one an hour slow still takes over a dead worker's job."""
    engine = connect(db)
    here = JobQueue(engine, lease=timedelta(seconds=2))
    fast = JobQueue(engine, clock=lambda: utcnow() + timedelta(hours=1))
    slow = JobQueue(engine, clock=lambda: utcnow() - timedelta(hours=1))
    job = here.enqueue(inbox_file(tmp_path, "a.wav")).job
    assert claim(here).id == job.id  # type: ignore[union-attr]
    assert fast.recover("a fast machine") == []  # the holder is alive: its lease holds by the server's time
    assert _poll(lambda: slow.recover("a slow machine"), 30)[0].id == job.id  # and it ran out by the same time
    taken = slow.claim("a slow machine")
    assert taken is not None and taken.lease_until is not None
    assert abs(taken.lease_until - (utcnow() + LEASE)) < timedelta(seconds=30)  # not an hour early


def _poll(probe: Callable[[], list[Job]], timeout: float) -> list[Job]:
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return found


def test_storage_trouble_puts_a_job_behind_the_others_for_a_while(queue: JobQueue, tmp_path: Path) -> None:
    """A job whose transcript cannot be written for now (disk full, a share gone) waits its own
    time, growing, behind the others; it keeps its checkpoint, and the try does not count."""
    first = queue.enqueue(inbox_file(tmp_path, "team/a.wav")).job
    second = queue.enqueue(inbox_file(tmp_path, "next.wav")).job
    assert claim(queue).id == first.id  # type: ignore[union-attr]
    queue.save_window(first.id, HOLDER, Window((Segment(0.0, 1.0, "kept"),), Checkpoint(30.0), 30.0, 30.0), 60.0,
                      0.1, "tiny.en", "fp32")
    assert queue.defer(first.id, HOLDER, "cannot write: [Errno 28] No space left on device") == 2.0
    (waiting,) = queue.get([first.id])
    assert waiting.status == JobStatus.QUEUED and waiting.attempts == 0 and waiting.processed_seconds == 30.0
    assert "No space left on device" in (waiting.error or "") and queue.segments(first.id)[0].text == "kept"
    assert claim(queue).id == second.id  # type: ignore[union-attr]  # the next one goes first
    assert claim(queue, "another worker") is None  # the first one's wait has not run out
    again = _poll(lambda: [j for j in [claim(queue, "another worker")] if j], 30)[0]
    assert again.id == first.id and again.error is None
    assert queue.defer(first.id, "another worker", "still full") == 4.0  # longer each time in a row
    third = queue.enqueue(inbox_file(tmp_path, "later.wav")).job
    assert _poll(lambda: [j for j in [claim(queue, "w3")] if j], 30)[0].id == third.id  # behind a newer job too


def test_a_jobs_own_errors_are_not_storage_errors() -> None:
    """What the worker tells apart (daemon/storage.py): these fail the job, the others make it wait."""
    for code in (errno.ENAMETOOLONG, errno.EACCES, errno.EPERM, errno.EINVAL, errno.EISDIR, errno.ENOENT):
        assert not storage_error(OSError(code, os.strerror(code))), errno.errorcode[code]
    for code in (errno.ENOSPC, errno.EIO, errno.EROFS, errno.ENOTCONN, errno.ESTALE, errno.ETIMEDOUT, errno.EDQUOT):
        assert storage_error(OSError(code, os.strerror(code))), errno.errorcode[code]


def test_touching_a_stopped_file_keeps_its_checkpoint(queue: JobQueue, tmp_path: Path) -> None:
    """Stopped mid-file, then touched (or synced with the same bytes) and queued again by a rescan:
    same content, same settings, so it resumes where it stopped."""
    path = inbox_file(tmp_path, "talk.wav")
    asked = {"language": "de"}
    job = queue.enqueue(path, settings=asked).job
    complete = {"language": "de", "task": "transcribe", "prompt": "", "chinese_script": None}
    claim(queue)
    queue.verify(job.id, HOLDER, fingerprint(path), "tiny.en", "fp32", complete)
    queue.save_window(job.id, HOLDER, Window((Segment(0.0, 2.0, "Hallo"),), Checkpoint(30.0), 30.0, 30.0), 90.0, 0.1,
                      "tiny.en", "fp32")
    queue.release(job.id, HOLDER)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 5_000_000_000))
    requeued = queue.enqueue(path, settings=asked)
    assert requeued.job.id == job.id and not requeued.created
    claim(queue)
    checked, restarted = queue.verify(job.id, HOLDER, fingerprint(path), "tiny.en", "fp32", complete)
    assert restarted is None and checked.processed_seconds == 30.0
    assert [s.text for s in queue.segments(job.id)] == ["Hallo"]


def test_the_same_content_at_the_same_path_is_one_job_whatever_the_mtime(queue: JobQueue, tmp_path: Path) -> None:
    """The watcher's machine and the worker's see different mtimes (NFS on one, SMB on the other:
    made real here by setting the mtime the worker sees, then setting it back); or the file is
    touched. Same path, same content: the same job, no duplicate to render and announce again,
    until its transcript is deleted (README: copied in again, it gets its transcript back)."""
    path = inbox_file(tmp_path, "talk.wav")
    watcher_sees = path.stat().st_mtime_ns
    job = queue.enqueue(path).job
    os.utime(path, ns=(watcher_sees, watcher_sees + 7_000_000_000))  # the worker's view
    claim(queue)
    queue.verify(job.id, HOLDER, fingerprint(path), "tiny.en", "fp32", {})
    written = queue.reserve_outputs(job.id, HOLDER, tmp_path / "outbox", {"srt": "1\n"})
    written["srt"].parent.mkdir()
    written["srt"].write_text("1\n")
    queue.finish(job.id, HOLDER, JobStatus.DONE, model="tiny.en")
    os.utime(path, ns=(watcher_sees, watcher_sees))  # the watcher's machine, at its next rescan
    assert not queue.enqueue(path).created
    os.utime(path, ns=(watcher_sees, watcher_sees + 60_000_000_000))  # touched
    assert not queue.enqueue(path).created
    assert [j.id for j in queue.jobs()] == [job.id]
    written["srt"].unlink()  # the user deleted the transcript
    os.utime(path, ns=(watcher_sees, watcher_sees + 120_000_000_000))  # and copied the recording in again
    again = queue.enqueue(path)
    assert again.created and again.job.id != job.id


def test_release_does_not_count_the_interrupted_attempt(queue: JobQueue, tmp_path: Path) -> None:
    job = queue.enqueue(inbox_file(tmp_path, "a.wav")).job
    claim(queue)
    queue.release(job.id, HOLDER)
    (row,) = queue.jobs()
    assert row.status == JobStatus.QUEUED and row.attempts == 0 and row.holder is None


def test_retry_failed(queue: JobQueue, tmp_path: Path) -> None:
    job = queue.enqueue(inbox_file(tmp_path, "a.wav")).job
    claim(queue)
    queue.fail(job.id, HOLDER, "bad")
    (retried,) = queue.retry(failed=True)
    assert retried.status == JobStatus.QUEUED and retried.error is None and retried.attempts == 0
    assert queue.retry([12345]) == []


def test_verify_restarts_changed_content_and_supersedes_older_versions(queue: JobQueue, tmp_path: Path) -> None:
    path = inbox_file(tmp_path, "a.wav", b"version one")
    job = queue.enqueue(path).job
    claim(queue)
    seen = fingerprint(path)
    _, restarted = queue.verify(job.id, HOLDER, seen, "tiny.en", "fp32", {})
    assert restarted is None
    queue.save_window(job.id, HOLDER, Window((Segment(0.0, 2.0, "one"),), Checkpoint(30.0), 30.0, 30.0), 60.0, 0.1,
                      "tiny.en", "fp32")
    queue.release(job.id, HOLDER)
    path.write_bytes(b"version two, queued while nobody watched")
    claim(queue)
    checked, restarted = queue.verify(job.id, HOLDER, fingerprint(path), "tiny.en", "fp32", {})
    assert restarted == "the file changed since it was queued"
    assert checked.processed_seconds == 0 and queue.segments(job.id) == []
    assert checked.sha256 == fingerprint(path).sha256

    queue.save_window(job.id, HOLDER, Window((Segment(0.0, 2.0, "two"),), Checkpoint(30.0), 30.0, 30.0), 60.0, 0.1,
                      "tiny.en", "fp32")
    queue.release(job.id, HOLDER)
    claim(queue)
    _, restarted = queue.verify(job.id, HOLDER, fingerprint(path), "tiny.en", "bf16", {})
    assert restarted is not None and "tiny.en in fp32" in restarted and queue.segments(job.id) == []
    queue.save_window(job.id, HOLDER, Window((Segment(0.0, 2.0, "two"),), Checkpoint(30.0), 30.0, 30.0), 60.0, 0.1,
                      "tiny.en", "bf16")
    queue.release(job.id, HOLDER)
    claim(queue)
    _, restarted = queue.verify(job.id, HOLDER, fingerprint(path), "tiny.en", "bf16", {"language": "zh"})
    assert restarted == "its checkpoint was made with other settings" and queue.segments(job.id) == []
    queue.release(job.id, HOLDER)

    path.write_bytes(b"version three")  # while job 1 is queued again, the watcher queues the new version
    newer = queue.enqueue(path)
    assert newer.created and newer.job.id == job.id  # the queued row is updated in place
    claim(queue)
    path.write_bytes(b"version four, while job 1 runs")
    newest = queue.enqueue(path).job
    assert newest.id != job.id
    old, _ = queue.verify(job.id, HOLDER, fingerprint(path), "tiny.en", "fp32", {})
    assert old.status == JobStatus.SUPERSEDED and f"job {newest.id}" in old.error


def test_output_names_never_collide_and_never_replace_a_file_we_did_not_write(queue: JobQueue, tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    (outbox / "notes.srt").write_text("the user's own file")

    def write(name: str, data: bytes, text: str) -> Path:
        job = queue.enqueue(inbox_file(tmp_path, name, data)).job
        claim(queue)
        (srt,) = queue.reserve_outputs(job.id, HOLDER, outbox, {"srt": text}).values()
        srt.write_text(text)
        queue.finish(job.id, HOLDER, JobStatus.DONE)
        return srt

    assert write("Meeting.m4a", b"1", "a").name == "Meeting.srt"
    assert write("meeting.mp3", b"2", "b").name == "meeting (2).srt"  # one file on a case-blind disk
    nfc, nfd = unicodedata.normalize("NFC", "réunion"), unicodedata.normalize("NFD", "réunion")
    assert write(nfc + ".wav", b"3", "c").name == nfc + ".srt"
    assert write(nfd + ".flac", b"4", "d").name == nfd + " (2).srt"
    assert write("notes.wav", b"5", "e").name == "notes (2).srt"
    assert (outbox / "notes.srt").read_text() == "the user's own file"
    # New content at the same path replaces its own transcript, even its "(2)" one.
    assert write("meeting.mp3", b"2, again", "f").name == "meeting (2).srt"
    # ...unless the user edited it meanwhile: then it is theirs.
    (outbox / "meeting (2).srt").write_text("corrected by hand")
    assert write("meeting.mp3", b"2, third take", "g").name == "meeting (3).srt"


def _write_all(queue: JobQueue, job_id: int, outbox: Path, text: str, formats: tuple[str, ...] = FORMATS) -> dict[str, Path]:
    """What the worker does: reserve the paths, then write the files."""
    written = queue.reserve_outputs(job_id, HOLDER, outbox, {fmt: f"{text} as {fmt}" for fmt in formats})
    for fmt, path in written.items():
        path.write_text(f"{text} as {fmt}")
    return written


def test_every_format_of_a_job_gets_one_stem_and_a_foreign_file_moves_them_all(queue: JobQueue, tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    (outbox / "Interview.VTT").write_text("the user's own subtitles")  # one format's name taken, on a case-blind disk
    first = queue.enqueue(inbox_file(tmp_path, "talk.wav", b"1")).job
    second = queue.enqueue(inbox_file(tmp_path, "interview.mp3", b"2")).job
    for job in (first, second):
        claim(queue)
    assert _write_all(queue, first.id, outbox, "talk") == {fmt: outbox / f"talk.{fmt}" for fmt in FORMATS}
    assert _write_all(queue, second.id, outbox, "interview") == {
        fmt: outbox / f"interview (2).{fmt}" for fmt in FORMATS}  # every format moves, not only vtt
    assert (outbox / "Interview.VTT").read_text() == "the user's own subtitles"
    assert queue.outputs(second.id) == [outbox / f"interview (2).{fmt}" for fmt in FORMATS]
    # Another input with the same stem: its files would be first's, so it gets the next stem.
    third = queue.enqueue(inbox_file(tmp_path, "sub/../Talk.flac", b"3")).job
    claim(queue)
    assert _write_all(queue, third.id, outbox, "other talk", ("txt",)) == {"txt": outbox / "Talk (2).txt"}


def test_new_content_replaces_its_own_files_and_their_rows(queue: JobQueue, tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    (outbox / "memo.srt").write_text("not ours")
    old = queue.enqueue(inbox_file(tmp_path, "memo.wav", b"old")).job
    claim(queue)
    assert _write_all(queue, old.id, outbox, "old", ("srt", "json"))["json"] == outbox / "memo (2).json"
    queue.finish(old.id, HOLDER, JobStatus.DONE)
    new = queue.enqueue(inbox_file(tmp_path, "memo.wav", b"new")).job
    assert new.id != old.id
    claim(queue)
    assert _write_all(queue, new.id, outbox, "new", ("srt", "json")) == {
        "srt": outbox / "memo (2).srt", "json": outbox / "memo (2).json"}  # its earlier stem, not memo.*
    # Written again (a retry, or a crash after the rows were recorded): the rows are replaced, not added.
    assert _write_all(queue, new.id, outbox, "newer", ("srt", "json", "txt"))["txt"] == outbox / "memo (2).txt"
    assert queue.outputs(new.id) == [outbox / "memo (2).srt", outbox / "memo (2).json", outbox / "memo (2).txt"]
    assert (outbox / "memo (2).srt").read_text() == "newer as srt"
    assert (outbox / "memo.srt").read_text() == "not ours"


def test_a_window_keeps_its_words(queue: JobQueue, tmp_path: Path) -> None:
    job = queue.enqueue(inbox_file(tmp_path, "a.wav")).job
    claim(queue)
    words = (Word(0.1234, 0.56789, " Zoë", 0.987654), Word(0.56789, 1.0, "的", 0.5))
    segments = (Segment(0.1234, 1.0, "Zoë的", (50364, 50414), words), Segment(1.0, 2.0, "no words"))
    queue.save_window(job.id, HOLDER, Window(segments, Checkpoint(2.0), 2.0, 2.0), 2.0, 0.1, "tiny.en", "fp32")
    stored = queue.segments(job.id)
    assert stored == [Segment(0.1234, 1.0, "Zoë的", words=(Word(0.123, 0.568, " Zoë", 0.9877), Word(0.568, 1.0, "的", 0.5))),
                      Segment(1.0, 2.0, "no words")]
    with queue.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT words FROM segments ORDER BY seq").fetchall() == [
            ('[[0.123, 0.568, " Zoë", 0.9877], [0.568, 1.0, "的", 0.5]]',), ("[]",)]  # readable in sqlite3 and psql


def test_a_database_of_version_1_is_upgraded_with_its_transcripts_listed(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    old_database(db, 1)
    queue = JobQueue(connect(db))
    done, legacy, duplicate, queued = sorted(queue.jobs(), key=lambda j: j.id or 0)
    assert queue.outputs(done.id) == [Path("/outbox/Done.srt")] and queue.outputs(queued.id) == []
    ro = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    assert ro.execute("SELECT job_id, format, path, key, sha256 FROM outputs ORDER BY job_id").fetchall() == [
        (done.id, "srt", "/outbox/Done.srt", "/outbox/done.srt", HELLO_SHA256),
        (legacy.id, "srt", "/outbox/Legacy.srt", "/outbox/legacy.srt", None),  # written before hashes were kept
        (duplicate.id, "srt", "/outbox/dup.srt", "/outbox/dup.srt", HELLO_SHA256),
    ]
    columns = {row[1] for row in ro.execute("PRAGMA table_info(jobs)")}
    assert not columns & {"srt_path", "srt_key", "srt_sha256"}
    assert ro.execute("SELECT words FROM segments").fetchall() == [("[]",), ("[]",)]
    assert [s.text for s in queue.segments(done.id)] == ["hello there", "and goodbye"]
    assert ro.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert ro.execute("PRAGMA foreign_key_check").fetchall() == []
    assert version(queue.engine) == HEAD
    assert [j.id for j in JobQueue(connect(db)).jobs()] == [4, 3, 2, 1]  # opening it again changes nothing


def test_a_file_listed_before_the_upgrade_is_still_recognised_as_its_own(tmp_path: Path) -> None:
    """Version 1's rows say which bytes it wrote: after the upgrade, new content at the same path
    replaces that file; a file whose bytes are not those is left alone."""
    outbox, db = tmp_path / "outbox", tmp_path / "jobs.db"
    outbox.mkdir()
    old_database(db, 1, {"/inbox/": f"{tmp_path}/inbox/", "/outbox/": f"{outbox}/"})
    (outbox / "Done.srt").write_text("hello there")  # what version 1 wrote (its sha256 is in the row)
    (outbox / "dup.srt").write_text("edited by hand")
    queue = JobQueue(connect(db))
    again = queue.enqueue(inbox_file(tmp_path, "Done.wav", b"new content")).job
    copy = queue.enqueue(inbox_file(tmp_path, "dup.wav", b"other content")).job
    assert [claim(queue).id for _ in range(3)] == [4, again.id, copy.id]  # the fixture's queued job first
    assert _write_all(queue, again.id, outbox, "again", ("srt", "vtt")) == {
        "srt": outbox / "Done.srt", "vtt": outbox / "Done.vtt"}
    assert _write_all(queue, copy.id, outbox, "copy", ("srt",)) == {"srt": outbox / "dup (2).srt"}


def test_status_column_accepts_every_state_and_rejects_others(queue: JobQueue, tmp_path: Path) -> None:
    queue.enqueue(inbox_file(tmp_path, "a.wav"))
    for state in JobStatus:
        with queue.engine.begin() as conn:
            conn.exec_driver_sql(f"UPDATE jobs SET status = '{state.value}'")
    with pytest.raises(IntegrityError):
        with queue.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE jobs SET status = 'paused'")
