"""End to end with the real tiny.en model on real (espeak-ng) speech: folder in, transcripts out."""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import signal
import sys
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import srt

from daemon.config import ENV_PREFIX, Config
from daemon.engine import precision
from daemon.formats import FORMATS
from tests import formats
from tests.conftest import TEST_MODEL, CliRunner
from tests.daemon_proc import log_text, outputs, rows, settled, srt_cues, srt_text, start, stop, wait_until
from tests.speech import compose, real_speech, sentences, wer, write_slowly

pytestmark = pytest.mark.slow
MAX_WER = 0.15


def test_drop_a_recording_get_a_transcript(tmp_path: Path, daemon_env: dict[str, str], cli: CliRunner) -> None:
    inbox, outbox, db = tmp_path / "inbox", tmp_path / "outbox", tmp_path / "state" / "jobs.db"
    recording = compose(sentences()[:6])
    daemon = start("run", daemon_env)
    try:
        recording.write(inbox / "meeting.m4a")
        srt_path = outbox / "meeting.srt"
        wait_until(lambda: settled(db, 1), 240, "the job to finish", daemon)
        (job,) = rows(db)
        assert job["status"] == "done", job["error"]
        assert outputs(db, job["id"]) == {"srt": srt_path}
        assert wer(recording.text, srt_text(srt_path)) <= MAX_WER
        assert abs(job["audio_seconds"] - recording.seconds) < 0.5
        assert job["rtf"] > 0 and job["attempts"] == 1 and job["error"] is None
        assert job["finished_at"] >= job["started_at"] >= job["created_at"]

        cues = list(srt.parse(srt_path.read_text(encoding="utf-8")))
        assert cues[-1].end.total_seconds() <= recording.seconds + 1.0
        assert all(a.end <= b.start for a, b in zip(cues, cues[1:]))

        table = cli("status").stdout
        assert "done" in table and "meeting.m4a" in table and "meeting.srt" in table
        (as_json,) = json.loads(cli("status", "--json").stdout)["jobs"]
        assert as_json["status"] == "done" and as_json["rtf"] == pytest.approx(job["rtf"])
        assert as_json["outputs"] == [str(srt_path)]
    finally:
        code, output = stop(daemon, signal.SIGINT)
    assert code == 0, output
    assert inbox.joinpath("meeting.m4a").exists(), "inputs are never deleted"

    # A restart scans the inbox again: the finished file must not be transcribed twice. The witness is a
    # recording moved in after the start-up scan. The old file has waited the same quiet period for
    # longer, and the watcher offers files to the queue in the order it first saw them, so once the
    # witness is queued the old file has been offered too; and a wrongly re-queued old file, older in the
    # queue, would have been transcribed before the witness is done.
    mtime = srt_path.stat().st_mtime_ns
    witness = compose(sentences()[6:8])
    daemon = start("run", daemon_env)
    try:
        logs = tmp_path / "logs"
        wait_until(lambda: log_text(logs / "watcher.log").count("start-up scan done") == 2, 120,
                   "the restarted watcher's start-up scan", daemon)
        os.replace(witness.write(tmp_path / "after the restart.wav"), inbox / "after the restart.wav")
        jobs = wait_until(lambda: settled(db, 2), 240, "the recording moved in after the restart", daemon)
    finally:
        code, output = stop(daemon, signal.SIGTERM)
    assert code == 0, output
    assert [Path(j["path"]).name for j in jobs] == ["meeting.m4a", "after the restart.wav"]
    assert jobs[1]["status"] == "done", jobs[1]["error"]
    assert wer(witness.text, srt_text(outbox / "after the restart.srt")) <= MAX_WER
    assert srt_path.stat().st_mtime_ns == mtime
    assert log_text(logs / "worker.log").count("transcribing meeting.m4a") == 1


# The slowly written file gets a piece every 0.25 s against a 3 s quiet period: a writer stalled for
# 2.75 s is what it takes to fail by load. The writing lasts two quiet periods, so a watcher that let a
# file grow after it first saw it without starting its quiet period again would queue it half written.
SLOW_QUIET_SECONDS = 3.0
SLOW_WRITE_SECONDS = 2 * SLOW_QUIET_SECONDS
SLOW_PIECES = 25  # a piece every SLOW_WRITE_SECONDS / (SLOW_PIECES - 1) = 0.25 s


def test_bad_and_tricky_inputs(tmp_path: Path, daemon_env: dict[str, str]) -> None:
    inbox, outbox, db = tmp_path / "inbox", tmp_path / "outbox", tmp_path / "state" / "jobs.db"
    talk = compose(sentences()[6:9])
    other = compose(sentences()[9:12])
    daemon = start("run", {**daemon_env, "WHISPER_DAEMON_QUIET_SECONDS": str(SLOW_QUIET_SECONDS)})
    try:
        talk.write(inbox / "first name.wav")
        # Seeded: now and then other random bytes look like a container that holds no audio track.
        (inbox / "random.mp3").write_bytes(random.Random(0).randbytes(50_000))
        (inbox / "empty.wav").write_bytes(b"")
        unicode_name = "Réunion d'équipe – 日本語.m4a"
        other.write(inbox / unicode_name)
        wait_until(lambda: settled(db, 4), 240, "the first four jobs", daemon)
        # The same recording again under another name: a duplicate, no second transcription.
        shutil.copy(inbox / "first name.wav", inbox / "copy of the same.wav")
        # A file written slowly must only be queued once complete.
        slow = tmp_path / "slow.wav"
        other.write(slow)
        stalled = write_slowly(slow.read_bytes(), inbox / "slowly.wav", SLOW_WRITE_SECONDS, SLOW_PIECES)
        finished_writing = time.time()
        assert stalled < SLOW_QUIET_SECONDS, f"the writer stalled {stalled:.1f} s: the machine is too busy"
        jobs = wait_until(lambda: settled(db, 6), 240, "all six jobs", daemon)
    finally:
        code, output = stop(daemon)
    assert code == 0, output

    by_name = {Path(j["path"]).name: j for j in jobs}
    assert len(jobs) == 6, [j["path"] for j in jobs]
    first, copy = by_name["first name.wav"], by_name["copy of the same.wav"]
    assert first["status"] == "done" and copy["status"] == "duplicate"
    assert copy["duplicate_of"] == first["id"] and copy["sha256"] == first["sha256"]
    assert (outbox / "copy of the same.srt").read_text() == (outbox / "first name.srt").read_text()
    assert wer(talk.text, srt_text(outbox / "first name.srt")) <= MAX_WER
    worker_log = (tmp_path / "logs" / "worker.log").read_text()
    assert worker_log.count("transcribing first name.wav") == 1
    assert "transcribing copy of the same.wav" not in worker_log

    assert by_name["random.mp3"]["status"] == "failed"
    assert "not a recognisable audio" in by_name["random.mp3"]["error"]
    assert by_name["empty.wav"]["status"] == "failed" and "empty" in by_name["empty.wav"]["error"]

    assert by_name[unicode_name]["status"] == "done"
    assert wer(other.text, srt_text(outbox / "Réunion d'équipe – 日本語.srt")) <= MAX_WER

    slowly = by_name["slowly.wav"]
    assert slowly["status"] == "done" and slowly["size"] == slow.stat().st_size
    assert datetime.fromisoformat(slowly["created_at"]).timestamp() >= finished_writing
    assert wer(other.text, srt_text(outbox / "slowly.srt")) <= MAX_WER


def test_every_format_for_a_recording_and_for_its_duplicate(tmp_path: Path, cli: CliRunner) -> None:
    """`formats` = all five: each file is written and listed for its job (in sqlite3 and `status
    --json`); the same recording under another name gets all five too, rendered from its twin. Both
    are announced to the `on_done` command and the webhook, with every file."""
    inbox, outbox, db = tmp_path / "inbox", tmp_path / "outbox", tmp_path / "state" / "jobs.db"
    recording = compose(sentences()[:3])
    recording.write(inbox / "standup.wav")
    shutil.copy(inbox / "standup.wav", inbox / "same talk.wav")
    cli("enqueue", str(inbox / "standup.wav"), str(inbox / "same talk.wav"))
    announced = tmp_path / "announced"
    announced.mkdir()
    script = tmp_path / "on done"
    script.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                      f"open(os.path.join({str(announced)!r}, os.environ['TRANSCRIPT_JOB_ID']), 'w')"
                      ".write(json.dumps(sys.argv[1:]))\n")
    script.chmod(0o755)
    posts: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cli("work", "--exit-when-empty", "--formats", ",".join(FORMATS), timeout=300,
            env_extra={f"{ENV_PREFIX}ON_DONE": shlex.quote(str(script)),
                       f"{ENV_PREFIX}WEBHOOK": f"http://127.0.0.1:{server.server_port}/done"})
    finally:
        server.shutdown()

    original, copy = rows(db)
    assert original["status"] == "done" and copy["status"] == "duplicate", (original["error"], copy["error"])
    assert copy["duplicate_of"] == original["id"]
    listed = {j["id"]: j["outputs"] for j in json.loads(cli("status", "--json").stdout)["jobs"]}
    for job, stem in ((original, "standup"), (copy, "same talk")):
        files = {fmt: outbox / f"{stem}.{fmt}" for fmt in FORMATS}
        assert outputs(db, job["id"]) == files
        assert listed[job["id"]] == [str(path) for path in files.values()]
    assert sorted(p.name for p in outbox.iterdir()) == sorted(f"{stem}.{fmt}" for stem in ("standup", "same talk")
                                                               for fmt in FORMATS)  # nothing else, no temp file
    for fmt in FORMATS:
        if fmt == "rttm":  # its second field names the recording: each file its own, the turns the same
            turns = {stem: [line.split(" ", 2) for line in (outbox / f"{stem}.rttm").read_text().splitlines()]
                     for stem in ("same talk", "standup")}
            assert [t[2] for t in turns["same talk"]] == [t[2] for t in turns["standup"]], fmt
            assert {t[1] for t in turns["standup"]} <= {"standup"} and {t[1] for t in turns["same talk"]} != {"standup"}
            continue
        assert (outbox / f"same talk.{fmt}").read_bytes() == (outbox / f"standup.{fmt}").read_bytes(), fmt
    for job, stem in ((original, "standup"), (copy, "same talk")):  # the worker drained them before it exited
        files = [str(outbox / f"{stem}.{fmt}") for fmt in FORMATS]
        assert json.loads((announced / str(job["id"])).read_text()) == files
        assert [p for p in posts if p["job"] == job["id"]] == [
            {"job": job["id"], "source": str(inbox / f"{stem}.wav"), "outputs": files, "language": "en",
             "duplicate_of": job["duplicate_of"]}]

    assert wer(recording.text, srt_text(outbox / "standup.srt")) <= MAX_WER
    vtt = (outbox / "standup.vtt").read_text(encoding="utf-8")
    assert vtt.startswith("WEBVTT\n") and vtt.count(" --> ") == len(srt_cues(outbox / "standup.srt"))
    assert wer(recording.text, (outbox / "standup.txt").read_text(encoding="utf-8")) <= MAX_WER
    document = json.loads((outbox / "standup.json").read_text(encoding="utf-8"))
    assert (document["language"], document["model"]) == ("en", TEST_MODEL)
    assert document["duration"] == pytest.approx(recording.seconds, abs=0.5)
    words = [w for seg in document["segments"] for w in seg["words"]]
    assert wer(recording.text, "".join(w["word"] for w in words)) <= MAX_WER
    assert all(0 < w["probability"] <= 1 and w["start"] <= w["end"] for w in words)
    header, *table = (outbox / "standup.tsv").read_text(encoding="utf-8").splitlines()
    assert header == "start\tend\ttext" and len(table) == len(document["segments"])
    assert [int(row.split("\t")[0]) for row in table] == [round(1000 * seg["start"]) for seg in document["segments"]]


MAX_REAL_WER = 0.15  # base: 6.7 % here, 2 errors in 30 words ("therefore" heard as "there for")
PATH_SETTINGS = ("INBOX", "OUTBOX", "DB", "LOG_DIR", "CACHE_DIR")


def test_the_default_configuration_on_real_speech(tmp_path: Path, daemon_env: dict[str, str],
                                                   cli: CliRunner) -> None:
    """What a new user gets: the multilingual `base` model, the language detected per recording, the
    precision `auto` measures on this CPU, on recordings of a real person (LJSpeech), through the
    CLI. Every other test pins tiny.en; here only the folders are set."""
    defaults = Config()
    assert (defaults.model, defaults.language, defaults.precision) == ("base", None, "auto")
    env = {k: v for k, v in daemon_env.items()
           if not k.startswith(ENV_PREFIX) or k.removeprefix(ENV_PREFIX) in PATH_SETTINGS}
    inbox, db = tmp_path / "inbox", tmp_path / "state" / "jobs.db"
    clips = real_speech("en")
    for clip in clips:
        shutil.copy(clip.audio, inbox / clip.audio.name)
    cli("enqueue", *(str(inbox / clip.audio.name) for clip in clips))
    worker = start("work", env, "--exit-when-empty", output=tmp_path / "work.out")
    wait_until(lambda: worker.poll() is not None, 900, "the worker to drain the queue", worker)
    code, output = stop(worker)
    assert code == 0, output

    jobs = rows(db)
    assert [Path(j["path"]).name for j in jobs] == [clip.audio.name for clip in clips]
    assert all(j["status"] == "done" for j in jobs), [j["error"] for j in jobs]
    assert {j["model"] for j in jobs} == {"base"}
    assert [j["language"] for j in jobs] == ["en"] * len(clips)  # detected: no language was set
    timings = formats.matmul_seconds()  # once the worker has exited, so the two do not compete
    # the format beside any int8 decoder (which auto adds when its own probe finds int8 faster)
    assert {precision.formats(j["precision"])[1] for j in jobs} <= formats.right_choices(timings), timings
    heard = " ".join(srt_text(outputs(db, j["id"])["srt"]) for j in jobs)
    score = wer(" ".join(clip.text for clip in clips), heard)
    print(f"defaults: base, {jobs[0]['precision']}, languages {[j['language'] for j in jobs]}, WER {score:.1%}")
    assert score <= MAX_REAL_WER, heard
