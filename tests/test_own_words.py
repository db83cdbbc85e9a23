"""Every transcript belongs to its own recording (issue 10): duplicates, replaced files, refused
files retried, files changed after they were queued, where transcripts go and what they are called.

Each scenario runs the real worker loop (`run_once`) with the real tiny.en model on real
(espeak-ng) speech, and checks each transcript against the words of ITS OWN recording, and not
against those of the recording it could wrongly have been given.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from daemon import config
from daemon.processes.guards import Guard
from daemon.processes.watcher import Watcher
from daemon.processes.worker import Worker
from daemon.queue.db import JobStatus
from tests.conftest import CliRunner
from tests.daemon_proc import srt_text
from tests.speech import Recording, compose, meeting, sentences, wer

pytestmark = pytest.mark.slow
MAX_WER = 0.15  # the transcript is this recording's
MIN_WER_OTHER = 0.6  # ...and clearly not the other one's

X = compose(sentences()[0:3])
Y = compose(sentences()[3:6])
Z = compose(sentences()[6:9])


def says(path: Path, own: Recording, *others: Recording) -> bool:
    text = srt_text(path)
    return wer(own.text, text) <= MAX_WER and all(wer(o.text, text) >= MIN_WER_OTHER for o in others)


def make_worker(daemon_env: dict[str, str], **settings: str) -> Worker:
    worker = Worker(config.load(settings, env=daemon_env))
    worker.initialize()
    return worker


@pytest.fixture
def worker_log() -> Iterator[list[str]]:
    """What in-process workers log (the CLI entry point would send it to worker.log)."""
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="INFO", format="{message}")
    yield lines
    logger.remove(sink)


@pytest.fixture
def worker(daemon_env: dict[str, str]) -> Iterator[Worker]:
    worker = make_worker(daemon_env)
    yield worker
    worker.shutdown()


def drain(worker: Worker) -> None:
    while worker.run_once():
        pass


def test_a_duplicate_gets_its_twins_own_words_even_after_the_twins_path_got_other_words(
    tmp_path: Path, worker: Worker
) -> None:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    x_bytes = X.write(tmp_path / "x.wav").read_bytes()
    (inbox / "a.wav").write_bytes(x_bytes)
    worker.queue.enqueue(inbox / "a.wav")
    drain(worker)
    assert says(outbox / "a.srt", X, Y)

    Y.write(inbox / "a.wav")  # a.wav replaced by another recording, transcribed into the same a.srt
    worker.queue.enqueue(inbox / "a.wav")
    drain(worker)
    assert says(outbox / "a.srt", Y, X)

    (inbox / "b.wav").write_bytes(x_bytes)  # a copy of X arrives
    worker.queue.enqueue(inbox / "b.wav")
    drain(worker)
    assert says(outbox / "b.srt", X, Y)

    (inbox / "a.wav").write_bytes(x_bytes)  # and X is put back into a.wav
    worker.queue.enqueue(inbox / "a.wav")
    drain(worker)
    assert says(outbox / "a.srt", X, Y)
    statuses = [j.status for j in sorted(worker.queue.jobs(), key=lambda j: j.id or 0)]
    assert statuses == [JobStatus.DONE, JobStatus.DONE, JobStatus.DUPLICATE, JobStatus.DUPLICATE]
    assert sorted(os.listdir(outbox)) == ["a.srt", "b.srt"]


def test_refused_files_retried_are_read_and_checked_again_and_are_never_each_others_twins(
    tmp_path: Path, worker: Worker, cli: CliRunner
) -> None:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    # Two files the watcher could not read at the time (permissions are not enforced for root, so
    # the refusal is recorded the way the watcher records it), and a link to a private recording.
    X.write(inbox / "first.wav")
    Y.write(inbox / "second.wav")
    Z.write(tmp_path / "private.wav")
    (inbox / "link.wav").symlink_to(tmp_path / "private.wav")
    worker.queue.reject(inbox / "first.wav", "cannot read the file: Permission denied")
    worker.queue.reject(inbox / "second.wav", "cannot read the file: Permission denied")
    worker.queue.reject(inbox / "link.wav", "it is a symbolic link; links are not followed")
    cli("retry", "--failed")
    drain(worker)
    jobs = {Path(j.path).name: j for j in worker.queue.jobs()}
    assert jobs["first.wav"].status == JobStatus.DONE and says(outbox / "first.srt", X, Y)
    assert jobs["second.wav"].status == JobStatus.DONE and says(outbox / "second.srt", Y, X)
    assert jobs["link.wav"].status == JobStatus.FAILED and "symbolic link" in (jobs["link.wav"].error or "")
    assert sorted(os.listdir(outbox)) == ["first.srt", "second.srt"]  # the private recording was never read


def test_a_file_that_changed_after_it_was_queued_is_transcribed_as_it_is_now(tmp_path: Path, worker: Worker) -> None:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    X.write(inbox / "memo.wav")
    worker.queue.enqueue(inbox / "memo.wav")
    Y.write(inbox / "memo.wav")  # replaced before the worker got to it, and nobody queued it again
    drain(worker)
    (job,) = worker.queue.jobs()
    assert job.status == JobStatus.DONE and says(outbox / "memo.srt", Y, X)


def _stop_after_first_window(worker: Worker) -> None:
    """Stands in for a SIGTERM between two windows: the guard's thermal probe (asked after every
    window) sets the stop flag the signal handler would set."""
    def probe() -> None:
        worker.stop.set()
    worker.guard = Guard(worker.report, worker.stop.wait, thermal=probe, low_memory_mb=worker.cfg.min_available_mb)


def test_a_checkpoint_of_other_content_is_discarded_on_resume(tmp_path: Path, worker: Worker) -> None:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    first, second = meeting(70, seed=11), meeting(70, seed=12)
    first.write(inbox / "long.wav")
    worker.queue.enqueue(inbox / "long.wav")
    _stop_after_first_window(worker)
    assert worker.run_once()
    (job,) = worker.queue.jobs()
    assert job.status == JobStatus.QUEUED and job.processed_seconds > 0  # a checkpoint of `first`
    second.write(inbox / "long.wav")
    worker.stop.clear()
    worker.guard = Guard(worker.report, worker.stop.wait, low_memory_mb=worker.cfg.min_available_mb)
    drain(worker)
    (job,) = worker.queue.jobs()
    assert job.status == JobStatus.DONE
    assert wer(second.text, srt_text(outbox / "long.srt")) <= MAX_WER  # nothing of `first` is left in it


def test_a_checkpoint_made_with_another_precision_is_not_resumed(tmp_path: Path, daemon_env: dict[str, str],
                                                                 worker_log: list[str]) -> None:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    recording = meeting(70, seed=13)
    recording.write(inbox / "long.wav")
    worker = make_worker(daemon_env, precision="fp32")
    try:
        worker.queue.enqueue(inbox / "long.wav")
        _stop_after_first_window(worker)
        worker.run_once()
    finally:
        worker.shutdown()
    (job,) = worker.queue.jobs()
    assert job.status == JobStatus.QUEUED and job.precision == "fp32" and job.processed_seconds > 0
    worker = make_worker(daemon_env, precision="bf16")
    try:
        drain(worker)
    finally:
        worker.shutdown()
    (job,) = worker.queue.jobs()
    assert job.status == JobStatus.DONE and job.precision == "bf16" and job.resumed_from == 0
    assert any("checkpoint was made with tiny.en in fp32" in line for line in worker_log)
    # Started over in bf16: the transcript is what a bf16 worker makes of the whole file.
    shutil.copy(inbox / "long.wav", tmp_path / "again.wav")
    fresh = {"WHISPER_DAEMON_DB": str(tmp_path / "fresh.db"), "WHISPER_DAEMON_OUTBOX": str(tmp_path / "fresh")}
    worker = make_worker({**daemon_env, **fresh}, precision="bf16")
    try:
        worker.queue.enqueue(tmp_path / "again.wav")
        drain(worker)
    finally:
        worker.shutdown()
    assert srt_text(outbox / "long.srt") == srt_text(tmp_path / "fresh" / "again.srt")


def test_transcripts_go_to_the_outbox_of_the_worker_that_writes_them(tmp_path: Path, cli: CliRunner) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "team").mkdir()
    X.write(inbox / "team" / "standup.m4a")
    Y.write(tmp_path / "elsewhere.wav")
    cli("enqueue", str(inbox / "team" / "standup.m4a"), str(tmp_path / "elsewhere.wav"))  # default outbox then
    cli("work", "--exit-when-empty", "--outbox", str(tmp_path / "moved"), timeout=300)
    assert says(tmp_path / "moved" / "team" / "standup.srt", X, Y)  # the inbox's sub-folder, mirrored
    assert says(tmp_path / "moved" / "elsewhere.srt", Y, X)  # queued from outside the inbox
    assert not (tmp_path / "outbox").exists()


def test_names_that_one_disk_would_take_for_the_same_never_share_a_transcript(
    tmp_path: Path, worker: Worker
) -> None:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    outbox.mkdir()
    (outbox / "notes.srt").write_text("my own notes, not a transcript\n")
    nfc, nfd = unicodedata.normalize("NFC", "Café"), unicodedata.normalize("NFD", "Café")
    talks = {"Meeting.m4a": X, "meeting.mp3": Y, f"{nfc}.wav": Z, f"{nfd}.flac": X, "notes.wav": Y}
    for name, recording in talks.items():
        recording.write(inbox / name)
        worker.queue.enqueue(inbox / name)
    drain(worker)
    written = {Path(j.path).name: path.name for j in worker.queue.jobs() for path in worker.queue.outputs(j.id)}
    assert written == {"Meeting.m4a": "Meeting.srt", "meeting.mp3": "meeting (2).srt", f"{nfc}.wav": f"{nfc}.srt",
                       f"{nfd}.flac": f"{nfd} (2).srt", "notes.wav": "notes (2).srt"}
    assert says(outbox / "Meeting.srt", X, Y) and says(outbox / "meeting (2).srt", Y, X)
    assert (outbox / "notes.srt").read_text() == "my own notes, not a transcript\n"


def test_copied_in_again_with_its_mtime_kept_its_transcript_comes_back(tmp_path: Path, worker: Worker) -> None:
    """Issue 22: the README's promise holds for a copy that keeps the mtime (`cp -p`, the Finder, `mv`
    out and back): the real watcher sees it arrive, and its transcript is written again from the
    stored segments. A rescan of the same, untouched file adds nothing."""
    inbox, outbox, elsewhere = tmp_path / "inbox", tmp_path / "outbox", tmp_path / "elsewhere"
    elsewhere.mkdir()
    X.write(elsewhere / "memo.wav")
    watcher = Watcher(inbox, lambda path, arrived: worker.queue.enqueue(path, arrived=arrived), quiet_seconds=0.5)
    stop = threading.Event()
    thread = threading.Thread(target=watcher.run, args=(stop,))
    thread.start()

    def jobs(count: int) -> bool:
        deadline = time.monotonic() + 30
        while len(worker.queue.jobs()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(worker.queue.jobs()) == count

    try:
        shutil.copy2(elsewhere / "memo.wav", inbox / "memo.wav")
        assert jobs(1)
        drain(worker)
        assert says(outbox / "memo.srt", X, Y)
        (outbox / "memo.srt").unlink()
        (inbox / "memo.wav").unlink()
        shutil.copy2(elsewhere / "memo.wav", inbox / "memo.wav")  # cp -p: same bytes, same mtime
        assert jobs(2)
        drain(worker)
        assert says(outbox / "memo.srt", X, Y)
        (outbox / "memo.srt").unlink()
        (inbox / "memo.wav").rename(elsewhere / "memo.wav")  # mv out, and back in
        (elsewhere / "memo.wav").rename(inbox / "memo.wav")
        assert jobs(3)
        drain(worker)
        assert says(outbox / "memo.srt", X, Y)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not worker.queue.enqueue(inbox / "memo.wav").created  # a rescan: nothing to do
    first, *again = sorted(worker.queue.jobs(), key=lambda j: j.id)
    assert first.status == JobStatus.DONE and [j.status for j in again] == [JobStatus.DUPLICATE] * 2


def test_copied_in_again_after_its_transcript_was_deleted_it_is_written_again(tmp_path: Path, worker: Worker) -> None:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    X.write(inbox / "memo.wav")
    worker.queue.enqueue(inbox / "memo.wav")
    drain(worker)
    assert worker.queue.enqueue(inbox / "memo.wav").created is False  # a restart's rescan: nothing to do
    data = (inbox / "memo.wav").read_bytes()
    (outbox / "memo.srt").unlink()
    (inbox / "memo.wav").unlink()
    (inbox / "memo.wav").write_bytes(data)  # the same recording, copied in again
    assert worker.queue.enqueue(inbox / "memo.wav").created
    drain(worker)
    assert says(outbox / "memo.srt", X, Y)
