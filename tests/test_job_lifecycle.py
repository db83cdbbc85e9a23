"""A job's life when the user's folders misbehave (issue 22): one job's own error never blocks the
others, storage trouble with one job lets the others go first, a read error in the middle of a file
never yields a short "done" transcript, a file cut short says so, a live worker never loses its
lease, and a dead worker's job is resumed elsewhere within 2 minutes.

Real processes, the real tiny.en model on real speech, real faults: an immutable folder
(`chattr +i`, which stops root too), a full tmpfs, and a FUSE file system (tests/flaky_fs.py) whose
reads fail or crawl on cue and whose names are short (eCryptfs allows 143 bytes). Each test prints
what it measured (docs/reliability.md, rows 13-18).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CliRunner
from tests.daemon_proc import log_text, outputs, rows, settled, srt_text, start, stop, wait_until
from tests.faults import MountError, full_tmpfs, paths
from tests.flaky_fs import mounted, set_faults
from tests.speech import compose, meeting, sentences, wer, write_audio

pytestmark = pytest.mark.slow
MAX_WER = 0.15


def _at(job: dict[str, Any], column: str) -> float:
    return datetime.fromisoformat(job[column]).timestamp()


def _two_talks(inbox: Path, first: str) -> dict[str, str]:
    """`first` (in a sub-folder, perhaps) and `next.wav`, two short recordings: name → words."""
    talks = {first: compose(sentences()[0:2]), "next.wav": compose(sentences()[2:4])}
    for name, talk in talks.items():
        (inbox / name).parent.mkdir(parents=True, exist_ok=True)
        talk.write(inbox / name)
    return {name: talk.text for name, talk in talks.items()}


@pytest.fixture
def immutable() -> Iterator[list[Path]]:
    """Folders the test makes immutable (chattr +i); made mutable again whatever happens."""
    made: list[Path] = []
    yield made
    for folder in made:
        subprocess.run(["chattr", "-i", str(folder)], check=False, timeout=30)


def test_a_folder_that_refuses_writes_fails_its_job_and_the_next_one_runs(
    tmp_path: Path, daemon_env: dict[str, str], cli: CliRunner, immutable: list[Path]
) -> None:
    """`outbox/team` made immutable (chattr +i: even root cannot add a file), `inbox/team/a.wav`
    queued, then `inbox/next.wav`: the first fails saying why and what to do, the second is done.
    The worker drains the queue and exits (`--exit-when-empty`): a job put back again and again
    would keep it running past the deadline."""
    inbox, outbox, db, _ = paths(daemon_env)
    texts = _two_talks(inbox, "team/a.wav")
    (outbox / "team").mkdir(parents=True)
    made = subprocess.run(["chattr", "+i", str(outbox / "team")], capture_output=True, text=True, timeout=30)
    assert made.returncode == 0, f"chattr +i needs root on ext4, xfs, btrfs or tmpfs: {made.stderr}"
    immutable.append(outbox / "team")
    cli("enqueue", str(inbox / "team" / "a.wav"), str(inbox / "next.wav"))
    began = time.monotonic()
    cli("work", "--exit-when-empty", timeout=400)
    took = time.monotonic() - began
    blocked, after = rows(db)
    print(f"immutable outbox/team: a.wav {blocked['status']} ({blocked['error']}); next.wav {after['status']} "
          f"{_at(after, 'finished_at') - _at(blocked, 'finished_at'):.1f} s after a.wav failed; worker done in {took:.0f} s")
    assert blocked["status"] == "failed" and blocked["attempts"] == 1
    assert "a.wav: cannot write its transcript" in blocked["error"] and "Operation not permitted" in blocked["error"]
    assert "chattr +i" in blocked["error"] and "retry" in blocked["error"]
    assert after["status"] == "done"
    assert wer(texts["next.wav"], srt_text(outputs(db, after["id"])["srt"])) <= MAX_WER
    assert os.listdir(outbox / "team") == []


def test_a_name_too_long_for_the_outbox_fails_its_job_and_the_next_one_runs(
    tmp_path: Path, daemon_env: dict[str, str], cli: CliRunner
) -> None:
    """The outbox on a file system that allows names of 143 bytes, as eCryptfs does (FUSE, the only
    such file system that can be mounted here), and a recording whose name is 150 bytes long."""
    inbox, _, db, _ = paths(daemon_env)
    long_name = "a meeting of the committee on names " * 4
    long_name = long_name[:146] + ".wav"
    texts = _two_talks(inbox, long_name)
    outbox = tmp_path / "short names"
    with mounted(tmp_path / "outbox backing", outbox, tmp_path / "faults.json", {"name_max": 143}):
        env = {"WHISPER_DAEMON_OUTBOX": str(outbox)}
        cli("enqueue", str(inbox / long_name), str(inbox / "next.wav"), env_extra=env)
        cli("work", "--exit-when-empty", timeout=400, env_extra=env)
        refused, after = rows(db)
        print(f"outbox with 143-byte names: {refused['status']} ({refused['error']}); next.wav {after['status']}")
        assert refused["status"] == "failed" and "too long for the outbox's file system" in refused["error"]
        assert after["status"] == "done" and sorted(os.listdir(outbox)) == ["next.srt"]
        assert wer(texts["next.wav"], srt_text(outbox / "next.srt")) <= MAX_WER


@pytest.fixture
def full_team_folder(tmp_path: Path) -> Iterator[Path]:
    """outbox/team on a full 64 KiB tmpfs: a real ENOSPC for that folder only; a test without it fails."""
    try:
        with full_tmpfs(tmp_path / "outbox" / "team") as folder:
            yield folder
    except MountError as e:
        pytest.fail(f"cannot mount a tmpfs (needs root): {e}", pytrace=False)


def test_storage_trouble_with_one_job_lets_the_next_go_first(
    tmp_path: Path, daemon_env: dict[str, str], cli: CliRunner, full_team_folder: Path
) -> None:
    """outbox/team is full (ENOSPC: the storage's trouble, not the job's): `team/a.wav` waits, with
    its transcript kept, while `next.wav`, queued after it, is done; once space is back, a.wav is
    done too, transcribed once."""
    inbox, outbox, db, logs = paths(daemon_env)
    texts = _two_talks(inbox, "team/a.wav")
    cli("enqueue", str(inbox / "team" / "a.wav"), str(inbox / "next.wav"))
    worker = start("work", daemon_env, output=tmp_path / "work.out")
    try:
        began = time.monotonic()
        waiting, after = wait_until(lambda: (found := rows(db))[1]["status"] == "done" and found, 300,
                                    "next.wav to be done while a.wav waits", worker)
        took = time.monotonic() - began
        assert waiting["status"] in ("queued", "running") and waiting["storage_errors"] >= 1, waiting
        wait_until(lambda: "No space left on device" in cli("status").stdout, 120, "status to say why a.wav waits",
                   worker)
        (full_team_folder / "filler").unlink()
        first, _ = wait_until(lambda: settled(db, 2), 300, "a.wav once space is back", worker)
    finally:
        code, _ = stop(worker)
    assert code == 0
    log = log_text(logs / "worker.log")
    print(f"outbox/team full: next.wav done {took:.0f} s after the worker started while a.wav waited "
          f"({waiting['storage_errors']} failed write(s)); a.wav done once space was back, attempts {first['attempts']}")
    assert first["status"] == "done" and first["error"] is None and first["attempts"] == 1
    assert log.count("job 1: transcribing") == 1  # its segments were kept: only written again
    assert wer(texts["team/a.wav"], srt_text(outbox / "team" / "a.srt")) <= MAX_WER


def test_a_read_error_mid_file_waits_and_resumes_never_a_short_transcript(
    tmp_path: Path, daemon_env: dict[str, str], cli: CliRunner
) -> None:
    """The inbox on a FUSE file system; after the job's first checkpoint, reads past 75 % of the
    recording (beyond what the worker has read ahead: two 30 s pieces) fail with EIO (a share dropping halfway through a meeting), for a while. The job is
    never done meanwhile; when reads work again it resumes at its checkpoint and the transcript
    has every sentence."""
    share = tmp_path / "share"
    control = tmp_path / "faults.json"
    recording = meeting(90, seed=41)  # the recording of test_postgres_faults.py's takeover
    with mounted(tmp_path / "share backing", share, control):
        path = recording.write(share / "talk.wav")
        env = {**daemon_env, "WHISPER_DAEMON_INBOX": str(share)}
        _, outbox, db, logs = paths(env)
        cli("enqueue", str(path), env_extra=env)
        worker = start("work", env, output=tmp_path / "work.out")
        try:
            first = wait_until(lambda: (j := rows(db)) and j[0]["processed_seconds"] > 0 and j[0], 300,
                               "the first checkpoint", worker, interval=0.05)
            set_faults(control, {"fail_after": int(path.stat().st_size * 0.75)})
            failed = time.monotonic()
            waiting = wait_until(lambda: ((j := rows(db)[0])["status"] == "done" or j.get("storage_errors", 0) >= 2)
                                 and j, 600, "two failed reads", worker)
            assert waiting["status"] in ("queued", "running"), f"marked {waiting['status']} while unreadable"
            assert "Input/output error" in (waiting["error"] or "")
            assert not list(outbox.glob("*.srt")), "no transcript while the file cannot be read"
            set_faults(control, {})
            (done,) = wait_until(lambda: settled(db, 1), 600, "the job once reads work again", worker)
            mended = time.monotonic() - failed
        finally:
            code, _ = stop(worker)
    assert code == 0
    log = log_text(logs / "worker.log")
    resumed = re.findall(r"job 1: resuming talk\.wav at ([0-9.]+) s", log)
    text = srt_text(outbox / "talk.srt")
    print(f"EIO past 75 % of a {recording.seconds:.0f} s recording after its checkpoint at "
          f"{first['processed_seconds']:.0f} s: {waiting['storage_errors']} failed tries, then resumed at {resumed} s; "
          f"done {mended:.0f} s after the fault began, {done['audio_seconds']:.0f} s of audio, WER {wer(recording.text, text):.3f}")
    assert done["status"] == "done" and done["attempts"] == 1 and done["announced_seconds"] is None
    assert done["audio_seconds"] == pytest.approx(recording.seconds, abs=0.5)
    assert resumed and float(resumed[-1]) >= first["processed_seconds"] - 0.05
    assert "stopped reading at a damaged part" not in log
    assert wer(recording.text, text) <= MAX_WER


def test_a_file_cut_short_is_transcribed_and_says_where_its_audio_ended(
    tmp_path: Path, daemon_env: dict[str, str], cli: CliRunner
) -> None:
    """An .m4a with its index first, cut at half its bytes (a download that stopped): its header
    still announces the whole minute. The job is done with what there is, and `status` and the
    JSON output say where the audio ended."""
    inbox, outbox, db, _ = paths(daemon_env)
    recording = meeting(60, seed=52)
    whole = write_audio(recording.audio, tmp_path / "whole.m4a", faststart=True).read_bytes()
    (inbox / "cut.m4a").write_bytes(whole[: len(whole) // 2])
    env = {"WHISPER_DAEMON_FORMATS": "srt,json"}
    cli("enqueue", str(inbox / "cut.m4a"), env_extra=env)
    cli("work", "--exit-when-empty", timeout=400, env_extra=env)
    (job,) = rows(db)
    shown = cli("status").stdout
    document = json.loads((outbox / "cut.json").read_text(encoding="utf-8"))
    print(f"cut at half its bytes: {job['status']}, audio ended at {job['audio_seconds']:.1f} s of "
          f"{job['announced_seconds']:.1f} s; status: {shown.splitlines()[-1]}")
    assert job["status"] == "done"
    assert job["announced_seconds"] == pytest.approx(recording.seconds, abs=0.5)
    assert 20 < job["audio_seconds"] < 45
    assert re.search(r"the audio ended at 0:\d\d of the 1:0\d its header announced", shown), shown
    assert document["announced_duration"] == pytest.approx(recording.seconds, abs=0.5)
    assert document["duration"] == pytest.approx(job["audio_seconds"], abs=0.01)


def test_a_slow_share_never_costs_a_live_worker_its_lease(tmp_path: Path, daemon_env: dict[str, str],
                                                          cli: CliRunner) -> None:
    """Leases of 10 s; a 2-minute recording on a share where every read takes 0.7 s (FUSE), so that
    hashing it takes about 20 s and each window seconds more. A second worker, idle, looks for
    expired leases every 5 s all along: it never takes the job, which is done at the first
    attempt, and `status` never shows the busy worker as gone."""
    share = tmp_path / "share"
    control = tmp_path / "faults.json"
    recording = meeting(120, seed=54)
    with mounted(tmp_path / "share backing", share, control):
        path = recording.write(share / "talk.wav")
        envs = {name: {**daemon_env, "WHISPER_DAEMON_INBOX": str(share), "WHISPER_DAEMON_LEASE_SECONDS": "10",
                       "WHISPER_DAEMON_THREADS": "1", "WHISPER_DAEMON_LOG_DIR": str(tmp_path / "logs" / name)}
                for name in ("busy", "idle")}
        _, outbox, db, _ = paths(envs["busy"])
        cli("enqueue", str(path), env_extra=envs["busy"])
        set_faults(control, {"read_delay": 0.7})
        busy = start("work", envs["busy"], output=tmp_path / "busy.out")
        idle = None
        shown = []
        try:
            wait_until(lambda: rows(db)[0]["status"] == "running", 300, "the job to be claimed", busy)
            claimed = time.monotonic()
            idle = start("work", envs["idle"], output=tmp_path / "idle.out")
            while (job := rows(db)[0])["status"] == "running" and job["processed_seconds"] == 0:
                assert time.monotonic() - claimed < 300 and busy.poll() is None and idle.poll() is None
                shown.append(cli("status").stdout)  # while it hashes on the slow share
            hashed = time.monotonic() - claimed
            (done,) = wait_until(lambda: settled(db, 1), 600, "the job", busy)
        finally:
            code, _ = stop(busy)
            if idle is not None:
                stop(idle)
    idle_log = log_text(tmp_path / "logs" / "idle" / "worker.log")
    print(f"10 s leases, reads of 0.7 s: hashing and the first window took {hashed:.0f} s; {done['status']} at "
          f"attempt {done['attempts']}; the idle worker recovered it {idle_log.count('recovered job')} time(s); "
          f"{len(shown)} `status` reads meanwhile")
    assert hashed > 10, "the slow share did not outlast a lease: the test proves nothing"
    assert code == 0 and done["status"] == "done" and done["attempts"] == 1 and done["crashes"] == 0
    assert "recovered job" not in idle_log
    assert shown and not any(" gone " in out for out in shown)
    assert wer(recording.text, srt_text(outbox / "talk.srt")) <= MAX_WER


def test_a_killed_workers_job_is_resumed_by_another_within_two_minutes(
    tmp_path: Path, daemon_env: dict[str, str], cli: CliRunner
) -> None:
    """Two workers with the default lease; the one that holds a 90 s recording is SIGKILLed after
    its first checkpoint. The other resumes it from that checkpoint within 2 minutes."""
    inbox, outbox, db, _ = paths(daemon_env)
    recording = meeting(90, seed=53)
    recording.write(inbox / "talk.m4a")
    envs = {name: {**daemon_env, "WHISPER_DAEMON_THREADS": "1", "WHISPER_DAEMON_PRECISION": "fp32",
                   "WHISPER_DAEMON_LOG_DIR": str(tmp_path / "logs" / name)} for name in ("a", "b")}
    workers = {name: start("work", env, output=tmp_path / f"{name}.out") for name, env in envs.items()}
    try:
        for name, proc in workers.items():
            wait_until(lambda name=name: "worker ready" in log_text(tmp_path / "logs" / name / "worker.log"), 300,
                       f"worker {name}", proc)
        cli("enqueue", str(inbox / "talk.m4a"))
        job = wait_until(lambda: (j := rows(db)) and j[0]["processed_seconds"] > 0 and j[0], 300,
                         "the first checkpoint", interval=0.05)
        (holder,) = rows(db, "SELECT pid FROM workers WHERE id = ?", (job["holder"],))
        victim = next(name for name, proc in workers.items() if proc.pid == holder["pid"])
        survivor = next(name for name in workers if name != victim)
        workers[victim].send_signal(signal.SIGKILL)
        workers[victim].wait(timeout=30)
        killed = time.monotonic()
        wait_until(lambda: (j := rows(db)[0])["status"] == "running" and j["holder"] != job["holder"], 150,
                   "another worker to take the job", workers[survivor])
        took = time.monotonic() - killed
        (done,) = wait_until(lambda: settled(db, 1), 600, "the job", workers[survivor])
    finally:
        for proc in workers.values():
            stop(proc)
    log = log_text(tmp_path / "logs" / survivor / "worker.log")
    resumed = re.search(r"job 1: resuming talk\.m4a at ([0-9.]+) s", log)
    print(f"SIGKILL at {job['processed_seconds']:.1f} s, default lease: the other worker resumed the job "
          f"{took:.0f} s after the kill, at {resumed and resumed.group(1)} s; done, {done['attempts']} attempts")
    assert took < 120
    assert resumed is not None and float(resumed.group(1)) >= job["processed_seconds"] - 0.05
    assert done["status"] == "done" and done["attempts"] == 2
    assert wer(recording.text, srt_text(outbox / "talk.srt")) <= MAX_WER
