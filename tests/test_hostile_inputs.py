"""Hostile and odd inputs (docs/reliability.md, row 5): each ends `failed` with a clear reason or
`done`, outputs stay in the outbox, and the worker carries on. The real tiny.en model on real speech.

These tests run as root, and root reads a chmod 000 file anyway. So the daemon's processes run
without the capabilities that let root ignore file permissions (CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH, dropped from the bounding set before exec): a file owned by someone else
with mode 0600 is then unreadable for real, as it would be for an ordinary user.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from tests.daemon_proc import outputs, rows, settled, srt_text, start, stop, wait_until
from tests.speech import Recording, compose, sentences, wer, write_audio, write_silence, write_video_only

pytestmark = pytest.mark.slow
MAX_WER = 0.35  # two sentences per file: this checks they were transcribed, test_e2e checks accuracy
NOBODY = 65534
LONG = "a" * 251  # + ".mp3": a 255-byte name, the most a file system allows
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def _without_root_file_powers() -> None:
    """preexec_fn: root keeps only the capabilities left in the bounding set across exec."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _unprivileged(command: str, env: dict[str, str], output: Path) -> subprocess.Popen[str]:
    return start(command, env, output=output, preexec_fn=_without_root_file_powers)


def _lock(path: Path) -> None:
    """Someone else's file, private to them."""
    os.chown(path, NOBODY, NOBODY)
    os.chmod(path, 0o600)


def _speech(first: int) -> Recording:
    return compose(sentences()[first : first + 2])


def test_hostile_and_odd_inputs_fail_clearly_or_succeed(tmp_path: Path, daemon_env: dict[str, str]) -> None:
    inbox, outbox, db = tmp_path / "inbox", tmp_path / "outbox", tmp_path / "state" / "jobs.db"
    speech = {  # name in the inbox -> recording, for the ones that must be transcribed
        "x..y...mp3": _speech(0), "line one\nline two.wav": _speech(2), "🎙️ memo 😀.m4a": _speech(4),
        LONG + ".mp3": _speech(6), LONG + ".wav": _speech(8), "😀" * 62 + ".ogg": _speech(10),
        "x.mp3/inner.wav": _speech(12),
    }
    for name, recording in speech.items():
        (inbox / name).parent.mkdir(exist_ok=True)
        recording.write(inbox / name)
    _speech(14).write(inbox / "locked.wav")
    _lock(inbox / "locked.wav")
    _speech(16).write(inbox / "locked later.wav")
    (tmp_path / "elsewhere").mkdir()
    _speech(18).write(tmp_path / "elsewhere" / "secret.mp3")
    (inbox / "outside link.mp3").symlink_to(tmp_path / "elsewhere" / "secret.mp3")
    (inbox / "loop a.mp3").symlink_to(inbox / "loop b.mp3")
    (inbox / "loop b.mp3").symlink_to(inbox / "loop a.mp3")
    _speech(20).write(tmp_path / "latin-1.mp3")  # then renamed to a name that is not UTF-8 (Linux allows it)
    os.rename(os.fsencode(tmp_path / "latin-1.mp3"), os.fsencode(inbox) + b"/caf\xe9 latin-1.mp3")
    write_video_only(inbox / "screen recording.mp4", 5)
    cut = compose(sentences()[22:28])
    write_audio(cut.audio, inbox / "cut short.m4a", faststart=True)  # index first, as phones write it
    write_audio(cut.audio, inbox / "cut no index.m4a")  # index last: the cut takes it away
    for name in ("cut short.m4a", "cut no index.m4a"):
        data = (inbox / name).read_bytes()
        (inbox / name).write_bytes(data[: len(data) * 55 // 100])
    expected_jobs = len(speech) + 9  # every file above; the folder x.mp3 is not one

    # Rescanning every second, the watcher looks again at "locked later.wav" after it is locked and
    # before the worker gets to it: the queued job still speaks for that file.
    watcher = _unprivileged("watch", daemon_env | {"WHISPER_DAEMON_RESCAN_SECONDS": "1"}, tmp_path / "watch.out")
    worker = None
    try:
        wait_until(lambda: len(rows(db)) >= expected_jobs, 120, "every input to be seen", watcher)
        # Readable when queued, unreadable when its turn comes (the worker is not started yet).
        _lock(inbox / "locked later.wav")
        worker = _unprivileged("work", daemon_env, tmp_path / "work.out")
        wait_until(lambda: settled(db, expected_jobs), 300, "every job to finish", worker)
        _speech(24).write(inbox / "last.wav")  # the worker carries on after all of that
        last = "last.wav"  # jobs keep paths relative to the inbox
        jobs = wait_until(lambda: (js := settled(db, expected_jobs + 1)) and any(j["path"] == last for j in js) and js,
                          120, "the last job", worker)
        assert watcher.poll() is None and worker.poll() is None, "neither process died"
    finally:
        for proc in (worker, watcher):
            if proc is not None:
                stop(proc)

    by_name = {j["path"]: j for j in jobs}
    srt = {name: outputs(db, j["id"]).get("srt") for name, j in by_name.items()}  # None: failed
    print("\n".join(f"{j['status']:8s} {name!r}: {j['error'] or srt[name].name!r}" for name, j in by_name.items()))
    assert len(jobs) == expected_jobs + 1, [(j["id"], j["path"], j["status"], j["error"]) for j in jobs]  # one job per file
    assert "x.mp3" not in by_name

    def failed(name: str, reason: str) -> None:
        job = by_name[name]
        assert job["status"] == "failed" and reason in job["error"], job

    failed("locked.wav", "cannot read the file: Permission denied")  # by the watcher, which hashes it first
    failed("locked later.wav", "cannot read the file: Permission denied")  # by the worker
    for name in ("outside link.mp3", "loop a.mp3", "loop b.mp3"):
        failed(name, "symbolic link; links are not followed")
    failed("caf\\xe9 latin-1.mp3", "not valid UTF-8")
    failed("screen recording.mp4", "no audio track")
    failed("cut no index.m4a", "without its index (moov box)")

    for name, recording in {**speech, "last.wav": _speech(24)}.items():
        job = by_name[name]
        assert job["status"] == "done" and srt[name].parent == outbox / Path(name).parent, job  # sub-folders mirrored
        assert wer(recording.text, srt_text(srt[name])) <= MAX_WER, name
    assert srt["line one\nline two.wav"].name == "line one\nline two.srt"
    assert srt[LONG + ".mp3"].name == LONG + ".srt"
    assert srt[LONG + ".wav"].name == LONG[:247] + " (2).srt"  # cut to fit 255 bytes

    kept = by_name["cut short.m4a"]  # keeps the audio before the cut: its first two sentences at least
    assert kept["status"] == "done" and 0.4 * cut.seconds < kept["audio_seconds"] < 0.7 * cut.seconds
    first_two = " ".join(s.text for s in sentences()[22:24])
    said = srt_text(srt["cut short.m4a"]).split()
    assert wer(first_two, " ".join(said[: len(first_two.split())])) <= MAX_WER

    # Confinement: the SRTs and nothing else in the outbox; nothing new anywhere else.
    assert sorted(p.relative_to(outbox) for p in outbox.rglob("*") if not p.is_dir()) == sorted(
        srt[name].relative_to(outbox) for name, j in by_name.items() if j["status"] == "done")
    assert {p.name for p in tmp_path.iterdir()} <= {"elsewhere", "home", "inbox", "logs", "outbox", "state",
                                                    "watch.out", "work.out"}
    assert [p.name for p in (tmp_path / "elsewhere").iterdir()] == ["secret.mp3"]


def test_long_silence_gives_an_empty_srt_quickly(tmp_path: Path, daemon_env: dict[str, str]) -> None:
    inbox, db = tmp_path / "inbox", tmp_path / "state" / "jobs.db"
    minutes = 10  # each; bench/faults_silence.py does 3 hours
    write_silence(inbox / "silence.flac", minutes * 60)  # digital zeros
    write_silence(inbox / "room tone.flac", minutes * 60, noise_dbfs=-70)  # a quiet room through a microphone
    # "Quickly": a minute per hour of silence at most (a second per minute), plus starting up.
    deadline = 30 + 2 * minutes
    worker = start("run", daemon_env, output=tmp_path / "run.out")
    try:
        jobs = wait_until(lambda: settled(db, 2), deadline, "both silent recordings")
    except AssertionError:
        jobs = rows(db)
        pytest.fail(f"not done within {deadline} s: " + ", ".join(
            f"{Path(j['path']).name} {j['status']} at {j['processed_seconds']:.0f} of "
            f"{j['audio_seconds'] or 0:.0f} s" for j in jobs))
    finally:
        stop(worker)
    for job in jobs:
        took = (datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])).total_seconds()
        print(f"silence: {Path(job['path']).name}, {minutes} min, transcribed in {took:.1f} s")
        assert job["status"] == "done" and abs(job["audio_seconds"] - minutes * 60) < 1, job  # all of it
        assert outputs(db, job["id"])["srt"].read_text(encoding="utf-8") == "", "no hallucinated text"
