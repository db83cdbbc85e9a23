"""Delivery (issue 12): a desktop notification, an on_done command and a webhook when a transcript is
ready, each off by default; whatever fails is logged, never raised, and never holds up the worker.
Real processes and a real HTTP server: nothing here replaces subprocess or urllib."""

from __future__ import annotations

import base64
import errno
import html
import json
import os
import shlex
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest
from loguru import logger

from daemon.config import ConfigError, load
from daemon.formats.delivery import Delivery, Ready
from tests.daemon_proc import wait_until

DEADLINE = 30.0  # generous: starting a Python process on a busy 2-core machine can take seconds
POLL = 0.02  # the commands below start and finish in milliseconds
HANG_TIMEOUT = 1.0  # injected instead of COMMAND_TIMEOUT_SECONDS (10 minutes) through Delivery's command_timeout
TITLE = "Transcript ready"
HOSTILE = """a "quoted" & (do shell script "id") ¬ \\ $(id) `id` 'x' -n.wav"""  # AppleScript and shell bait

# The on_done script: `script RECORDS OUTPUT…`. It records what it was given in RECORDS/<recording's stem>.json,
# then behaves as the recording's name says.
SCRIPT = """\
import json, os, signal, subprocess, sys
from pathlib import Path

records, name = Path(sys.argv[1]), Path(os.environ["TRANSCRIPT_SOURCE"]).stem
said = {"argv": sys.argv[1:], "cwd": os.getcwd(), "pid": os.getpid(),
        "env": {k: v for k, v in os.environ.items() if k.startswith(("TRANSCRIPT_", "WHISPER_DAEMON_"))}}
if name.startswith("hang"):  # a child too: a timeout must stop the whole group
    said["child"] = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"]).pid
(records / "tmp").write_text(json.dumps(said))
os.replace(records / "tmp", records / f"{name}.json")  # whole, for the test that polls for it
if name.startswith("fail"):
    sys.exit("cannot upload: quota exceeded")
if name.startswith("hang"):
    print("stuck waiting for the server", file=sys.stderr, flush=True)
    signal.pause()
if name.startswith("gate"):
    (records / "gate").read_text()  # a FIFO: blocks until the test opens it for writing, then closes it
    (records / f"{name}.done").touch()
"""


@pytest.fixture
def log() -> Iterator[list[str]]:
    """What delivery logs, as "LEVEL message" lines."""
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message).rstrip("\n")), level="DEBUG",
                      format="{level} {message}")
    yield lines
    logger.remove(sink)


def executable(path: Path, body: str) -> Path:
    """A Python script run directly, by its shebang (the test's own interpreter)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return path


@pytest.fixture
def records(tmp_path: Path) -> Path:
    """Where the on_done script records its runs; a space in the name, so that on_done must be split
    like a shell would (shlex), not at every space."""
    folder = tmp_path / "run records"
    folder.mkdir()
    return folder


def on_done(tmp_path: Path, records: Path) -> str:
    return f"{shlex.quote(str(executable(tmp_path / 'bin' / 'announce', SCRIPT)))} {shlex.quote(str(records))}"


def ready(tmp_path: Path, name: str, job_id: int = 7, language: str | None = "de",
          duplicate_of: int | None = None) -> Ready:
    outbox = tmp_path / "outbox" / "talks"
    outbox.mkdir(parents=True, exist_ok=True)
    stem = Path(name).stem
    return Ready(job_id, tmp_path / "inbox" / "talks" / name, (outbox / f"{stem}.srt", outbox / f"{stem}.vtt"),
                 language, duplicate_of)


def record(records: Path, stem: str) -> dict[str, Any]:
    return json.loads((records / f"{stem}.json").read_text())


def gone(pid: int) -> bool:
    """Ended (a zombie counts: its parent, maybe an init that never reaps, has yet to collect it)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def open_gate(fifo: Path) -> None:
    """Let the script blocked on the FIFO go on: open it for writing once it has a reader, then close it."""
    def opened() -> int | None:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
            return None

    os.close(wait_until(opened, DEADLINE, f"a reader of {fifo}", interval=POLL))


def warnings(log: list[str]) -> list[str]:
    return [line for line in log if line.startswith(("WARNING", "ERROR"))]


# ---------------------------------------------------------------- the on_done command

def test_on_done_gets_the_output_paths_its_folder_and_the_jobs_details(tmp_path: Path, records: Path,
                                                                      log: list[str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # The daemon's own settings stay out of the command's environment (a webhook URL may hold a password).
    monkeypatch.setenv("WHISPER_DAEMON_WEBHOOK", "https://user:secret@example.org/hook")
    delivery = Delivery(False, on_done(tmp_path, records), None)
    done = ready(tmp_path, "talk.wav")
    delivery.announce(done)
    delivery.close(DEADLINE)
    said = record(records, "talk")
    assert said["argv"] == [str(records), *map(str, done.outputs)]  # its own arguments, then every output
    assert said["cwd"] == str(done.outputs[0].parent)
    assert said["env"] == {"TRANSCRIPT_JOB_ID": "7", "TRANSCRIPT_SOURCE": str(done.source),
                           "TRANSCRIPT_LANGUAGE": "de"}
    assert warnings(log) == []


def test_announce_returns_while_the_command_still_runs(tmp_path: Path, records: Path, log: list[str]) -> None:
    """The script blocks until the test opens a FIFO: announce() must return while the gate is still shut."""
    os.mkfifo(records / "gate")
    delivery = Delivery(False, on_done(tmp_path, records), None)
    returned = threading.Event()

    def announce_two() -> None:
        delivery.announce(ready(tmp_path, "gate1.wav"))
        delivery.announce(ready(tmp_path, "gate2.wav", job_id=8))  # queued behind the blocked one
        returned.set()

    threading.Thread(target=announce_two, daemon=True).start()
    wait_until(lambda: (records / "gate1.json").exists(), DEADLINE, "the first command to start", interval=POLL)
    assert returned.wait(DEADLINE), "announce() waited for the command"
    assert not (records / "gate1.done").exists() and not (records / "gate2.json").exists()
    open_gate(records / "gate")
    wait_until(lambda: (records / "gate1.done").exists(), DEADLINE, "the first command to finish", interval=POLL)
    open_gate(records / "gate")  # the second one, started once the first finished
    delivery.close(DEADLINE)
    assert (records / "gate2.done").exists()
    assert warnings(log) == []


def test_the_queue_of_announcements_is_bounded_and_what_does_not_fit_is_sent_later(
    tmp_path: Path, records: Path, log: list[str]
) -> None:
    """A command blocked on its first transcript while 40 more are finished: at most 3 wait in
    memory, the rest in the store (here a dict standing in for the queue's `deliveries` table, which
    test_announcements_survive_a_worker_killed… runs for real), and every one is still announced,
    once, when the command goes on."""
    os.mkfifo(records / "gate")
    store = {}  # job id → Ready: still to be sent
    lock = threading.Lock()

    def take(job_id: int, kind: str) -> bool:
        with lock:
            return store.pop(job_id, None) is not None

    def backlog() -> list[Ready]:
        with lock:
            return [store[job_id] for job_id in sorted(store)]

    delivery = Delivery(False, on_done(tmp_path, records), None, take=take, backlog=backlog, max_pending=3)
    names = ["gate.wav"] + [f"memo{i:02d}.wav" for i in range(40)]
    for job_id, name in enumerate(names):
        store[job_id] = ready(tmp_path, name, job_id=job_id)
        delivery.announce(store[job_id])
        assert delivery._pending.qsize() <= 3
    wait_until(lambda: (records / "gate.json").exists(), DEADLINE, "the first command to start", interval=POLL)
    open_gate(records / "gate")
    wait_until(lambda: all((records / f"{Path(name).stem}.json").exists() for name in names), 4 * DEADLINE,
               "every announcement", interval=POLL)
    delivery.close(DEADLINE)
    assert store == {}
    assert warnings(log) == ["WARNING 3 announcements are waiting to be sent; the next ones wait in the queue's "
                             "database"]


def test_a_failing_or_hanging_command_is_logged_and_the_next_one_still_runs(tmp_path: Path, records: Path,
                                                                           log: list[str]) -> None:
    delivery = Delivery(False, on_done(tmp_path, records), None, command_timeout=HANG_TIMEOUT)
    delivery.announce(ready(tmp_path, "fail.wav", job_id=1))
    delivery.announce(ready(tmp_path, "hang.wav", job_id=2))
    delivery.announce(ready(tmp_path, "after.wav", job_id=3))
    delivery.close(DEADLINE)
    assert record(records, "after")["env"]["TRANSCRIPT_JOB_ID"] == "3"
    program = tmp_path / "bin" / "announce"
    assert warnings(log) == [
        f"WARNING job 1: on_done command {program} exited with 1: cannot upload: quota exceeded",
        f"WARNING job 2: on_done command {program} was still running after 1 s; stopped it. Its last words: stuck "
        "waiting for the server",
    ]
    hung = record(records, "hang")
    for pid in hung["pid"], hung["child"]:  # the script's child too: the whole group was stopped
        wait_until(lambda: gone(pid), DEADLINE, f"process {pid} to end", interval=POLL)


def test_a_command_that_cannot_start_is_logged(tmp_path: Path, records: Path, log: list[str]) -> None:
    script = executable(tmp_path / "bin" / "gone", "")
    delivery = Delivery(False, str(script), None)
    script.unlink()  # after the settings were checked
    delivery.announce(ready(tmp_path, "talk.wav"))
    delivery.close(DEADLINE)
    (line,) = warnings(log)
    assert line.startswith(f"WARNING job 7: cannot run on_done command {script}: ") and "No such file" in line


def test_close_gives_up_on_a_hung_command_and_what_is_queued_behind_it(tmp_path: Path, records: Path,
                                                                       log: list[str]) -> None:
    delivery = Delivery(False, on_done(tmp_path, records), None)  # the 10-minute timeout: close() must not wait it out
    delivery.announce(ready(tmp_path, "hang.wav", job_id=1))
    delivery.announce(ready(tmp_path, "hang-too.wav", job_id=2))
    wait_until(lambda: (records / "hang.json").exists(), DEADLINE, "the command to start", interval=POLL)
    delivery.close(0.1)
    hung = record(records, "hang")
    for pid in hung["pid"], hung["child"]:
        wait_until(lambda: gone(pid), DEADLINE, f"process {pid} to end", interval=POLL)
    wait_until(lambda: not delivery._thread.is_alive(), DEADLINE, "the delivery thread to end", interval=POLL)
    assert not (records / "hang-too.json").exists()  # the thread ended without starting it
    assert warnings(log) == ["WARNING stopped announcing after 0.1 s: 1 transcript(s) left unannounced, besides the "
                             "one in hand"]  # and nothing about the command it stopped


# ---------------------------------------------------------------- the webhook

class Hook(ThreadingHTTPServer):
    """Answers each POST with the next of `statuses` (then 200), and keeps what it received."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), HookHandler)
        self.statuses: list[int] = []
        self.received: list[tuple[str, dict[str, str], Any]] = []  # path, headers (lower-case names), JSON body

    def url(self, userinfo: str = "", path: str = "/hook") -> str:
        return f"http://{userinfo}127.0.0.1:{self.server_address[1]}{path}"


class HookHandler(BaseHTTPRequestHandler):
    server: Hook

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        self.send_response(status)
        if status == 302:
            self.send_header("Location", "/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:  # requests are checked, not printed
        pass


@pytest.fixture
def hook(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hook]:
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # a developer's http_proxy must not take the test's requests
    server = Hook()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": POLL}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_webhook_posts_the_jobs_details_as_json(tmp_path: Path, hook: Hook, log: list[str]) -> None:
    delivery = Delivery(False, None, hook.url("robot:s%40cret@", "/hook?token=abc"))
    done = ready(tmp_path, HOSTILE, language=None, duplicate_of=3)
    delivery.announce(done)
    delivery.close(DEADLINE)
    ((path, headers, body),) = hook.received
    assert body == {"job": 7, "source": str(done.source), "outputs": [str(p) for p in done.outputs],
                    "language": None, "duplicate_of": 3}
    assert path == "/hook?token=abc" and headers["content-type"] == "application/json"
    assert headers["authorization"] == "Basic " + base64.b64encode(b"robot:s@cret").decode()  # from the URL
    assert warnings(log) == []


def test_webhook_errors_are_logged_without_credentials_and_later_posts_still_go(tmp_path: Path, hook: Hook,
                                                                                  log: list[str]) -> None:
    hook.statuses = [500, 302]
    delivery = Delivery(False, None, hook.url("robot:hunter2@", "/hook?token=abc"))
    for job_id in 1, 2, 3:
        delivery.announce(ready(tmp_path, f"talk{job_id}.wav", job_id=job_id))
    delivery.close(DEADLINE)
    assert [body["job"] for _, _, body in hook.received] == [1, 2, 3]  # a redirect is not followed
    shown = hook.url()  # neither the password nor the query's token
    assert warnings(log) == [f"WARNING job 1: webhook {shown} answered 500 Internal Server Error",
                             f"WARNING job 2: webhook {shown} answered 302 Found"]


def test_a_refused_webhook_connection_is_logged(tmp_path: Path, log: list[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with socket.socket() as closed:  # a port just freed: nothing listens there
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    delivery = Delivery(False, None, f"http://127.0.0.1:{port}/hook")
    delivery.announce(ready(tmp_path, "talk.wav"))
    delivery.close(DEADLINE)
    (line,) = warnings(log)
    assert line.startswith(f"WARNING job 7: webhook http://127.0.0.1:{port}/hook failed: ") and "refused" in line


def test_a_webhook_that_does_not_speak_http_is_logged(tmp_path: Path, log: list[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with socket.create_server(("127.0.0.1", 0)) as server:
        def answer_garbage() -> None:
            connection, _ = server.accept()
            with connection:
                connection.recv(65536)
                connection.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

        thread = threading.Thread(target=answer_garbage, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.getsockname()[1]}/hook"
        delivery = Delivery(False, None, url)
        delivery.announce(ready(tmp_path, "talk.wav"))
        delivery.close(DEADLINE)
        thread.join(DEADLINE)
    (line,) = warnings(log)
    assert line.startswith(f"WARNING job 7: webhook {url} failed: ")  # logged as a failure, not a crash


# ---------------------------------------------------------------- desktop notifications

def test_notification_commands_pass_the_text_as_arguments(tmp_path: Path) -> None:
    done = ready(tmp_path, HOSTILE, language="en")
    assert Delivery(True, None, None, platform="darwin").notification_command(done) == [
        "osascript", "-e", "on run argv", "-e", "display notification (item 1 of argv) with title (item 2 of argv)",
        "-e", "end run", "--", f"{HOSTILE} (en)", TITLE]
    assert Delivery(True, None, None, platform="linux").notification_command(ready(tmp_path, HOSTILE, language=None)) \
        == ["notify-send", "--", TITLE, HOSTILE.replace("&", "&amp;")]  # the body is markup: see below
    assert Delivery(True, None, None, platform="win32").notification_command(done) is None
    assert Delivery(False, None, None, platform="linux").notification_command(done) is None  # off by default


def test_notify_send_is_run_with_title_and_body(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                log: list[str]) -> None:
    said = tmp_path / "notify-send.json"
    executable(tmp_path / "bin" / "notify-send",
               f"import json, sys\nopen({str(said)!r}, 'w').write(json.dumps(sys.argv[1:]))\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    delivery = Delivery(True, None, None, platform="linux")
    delivery.announce(ready(tmp_path, HOSTILE))
    delivery.close(DEADLINE)
    assert json.loads(said.read_text()) == ["--", TITLE, f"{HOSTILE.replace('&', '&amp;')} (de)"]
    assert warnings(log) == []


def test_notify_send_bodies_are_escaped_for_its_markup(tmp_path: Path) -> None:
    """Issue 22: notification servers read notify-send's body as markup (<b>, <a href>, &amp;): a
    file name shows as it is named, never as bold text, a link or a swallowed entity. osascript's
    text is plain, and left alone."""
    name = '<b>bold & <a href="evil.example">link &lt;.wav'  # no "/": it is a file name
    body = Delivery(True, None, None, platform="linux").notification_command(ready(tmp_path, name, language="en"))[-1]
    assert body == '&lt;b&gt;bold &amp; &lt;a href="evil.example"&gt;link &amp;lt;.wav (en)'
    assert html.unescape(body) == f"{name} (en)"  # what the notification shows
    assert Delivery(True, None, None, platform="darwin").notification_command(ready(tmp_path, name))[-2] == f"{name} (de)"


def test_a_failing_notify_send_is_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log: list[str]) -> None:
    executable(tmp_path / "bin" / "notify-send", "import sys\nsys.exit('cannot open display')\n")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    delivery = Delivery(True, None, None, platform="linux")
    delivery.announce(ready(tmp_path, "talk.wav"))
    delivery.close(DEADLINE)
    assert warnings(log) == ["WARNING job 7: desktop notification failed: notify-send exited with 1: cannot open "
                             "display"]


def test_missing_notify_send_is_said_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log: list[str]) -> None:
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    delivery = Delivery(True, None, None, platform="linux")
    for job_id in 1, 2:
        delivery.announce(ready(tmp_path, f"talk{job_id}.wav", job_id=job_id))
    delivery.close(DEADLINE)
    assert warnings(log) == ["WARNING no desktop notifications: notify-send is not on PATH; install libnotify-bin "
                             "(Debian, Ubuntu) or libnotify (Fedora, Arch), or turn notify off"]


# ---------------------------------------------------------------- settings

def test_delivery_is_off_by_default() -> None:
    cfg = load({}, env={})
    assert (cfg.notify, cfg.on_done, cfg.webhook) == (False, None, None)


def test_delivery_settings_from_the_file_and_the_environment(tmp_path: Path, records: Path) -> None:
    command = on_done(tmp_path, records)
    toml = tmp_path / "c.toml"
    toml.write_text(f"notify = true\non_done = {json.dumps(command)}\nwebhook = \"https://example.com/hook\"\n")
    cfg = load({"config": str(toml)}, env={})
    assert (cfg.notify, cfg.on_done, cfg.webhook) == (True, command, "https://example.com/hook")
    assert load({}, env=cfg.to_env()) == cfg  # a child process or a service gets the same
    other = f"{shlex.quote(sys.executable)} -V"
    env = {"WHISPER_DAEMON_NOTIFY": "off", "WHISPER_DAEMON_WEBHOOK": "", "WHISPER_DAEMON_ON_DONE": other}
    cfg = load({"config": str(toml)}, env=env)  # the environment beats the file; "" unsets
    assert (cfg.notify, cfg.on_done, cfg.webhook) == (False, other, None)


@pytest.mark.parametrize(("env", "message"), [
    ({"WHISPER_DAEMON_ON_DONE": "'unclosed"}, "cannot be split into a command and its arguments .*check its quotes"),
    ({"WHISPER_DAEMON_ON_DONE": "no-such-program-anywhere --draft"},
     "'no-such-program-anywhere' is neither an executable file nor a command on PATH"),
    ({"WHISPER_DAEMON_ON_DONE": "bin/publish"}, "'bin/publish' is a relative path: give the program's absolute path"),
    ({"WHISPER_DAEMON_WEBHOOK": "ftp://example.com/hook"}, "webhook must be an http:// or https:// URL"),
    ({"WHISPER_DAEMON_WEBHOOK": "example.com/hook"}, "scheme '', host None"),
    ({"WHISPER_DAEMON_WEBHOOK": "https:///hook"}, "with a host"),
    ({"WHISPER_DAEMON_WEBHOOK": "http://[::1/hook"}, "webhook is not a URL"),
    ({"WHISPER_DAEMON_WEBHOOK": "http://example.com:hook/"}, "webhook is not a URL .*integer"),
    ({"WHISPER_DAEMON_WEBHOOK": "http://example.com:0/hook"}, "port 0"),
    ({"WHISPER_DAEMON_NOTIFY": "maybe"}, "'notify': 'maybe' is not a valid bool"),
])
def test_bad_delivery_settings_say_what_to_fix(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load({}, env=env)


def test_a_webhook_error_does_not_show_the_password() -> None:
    with pytest.raises(ConfigError) as refused:
        load({}, env={"WHISPER_DAEMON_WEBHOOK": "ftp://robot:hunter2@example.com/hook"})
    assert "hunter2" not in str(refused.value)


def test_on_done_must_be_executable(tmp_path: Path) -> None:
    script = tmp_path / "publish"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(ConfigError, match="chmod \\+x"):
        load({}, env={"WHISPER_DAEMON_ON_DONE": f"{script} --draft"})
    script.chmod(0o755)
    assert load({}, env={"WHISPER_DAEMON_ON_DONE": f"{script} --draft"}).on_done == f"{script} --draft"


def test_on_done_found_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    executable(tmp_path / "bin" / "publish", "")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert load({}, env={"WHISPER_DAEMON_ON_DONE": "publish --draft"}).on_done == "publish --draft"


# ---------------------------------------------------------------- across a crash


@pytest.mark.slow
def test_announcements_survive_a_worker_killed_before_sending_them_and_none_is_sent_twice(
    tmp_path: Path, records: Path, hook: Hook, daemon_env: dict[str, str], cli: Any
) -> None:
    """Two recordings; the on_done command hangs on the first (its name says so), so the webhook of
    the first, and both announcements of the second, finished meanwhile, are still to send when the
    worker is SIGKILLed. The restarted worker sends them; the hung command is not run again; a third
    start sends nothing more."""
    from tests.daemon_proc import log_text, rows, settled, start, stop
    from tests.speech import compose, sentences

    inbox = Path(daemon_env["WHISPER_DAEMON_INBOX"])
    db = Path(daemon_env["WHISPER_DAEMON_DB"])
    worker_log = Path(daemon_env["WHISPER_DAEMON_LOG_DIR"]) / "worker.log"
    for i, name in enumerate(("hang one.wav", "two.wav")):
        compose(sentences()[i : i + 1]).write(inbox / name)
    env = {**daemon_env, "WHISPER_DAEMON_ON_DONE": on_done(tmp_path, records), "WHISPER_DAEMON_WEBHOOK": hook.url()}
    cli("enqueue", str(inbox / "hang one.wav"), str(inbox / "two.wav"))
    worker = start("work", env, output=tmp_path / "work.out")
    try:
        wait_until(lambda: (records / "hang one.json").exists() and settled(db, 2), 300,
                   "the first command to hang and both jobs to be done", worker)
        worker.kill()
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            stop(worker)
        hung = record(records, "hang one")
        for pid in hung["pid"], hung["child"]:
            psutil.Process(pid).kill()
    assert hook.received == [] and not (records / "two.json").exists()  # nothing of it was sent before the kill
    starts = 1
    for _ in range(2):  # the restart sends what was left; the next start finds nothing more to send
        worker = start("work", env, output=tmp_path / "work.out")
        starts += 1
        try:
            wait_until(lambda: log_text(worker_log).count("worker ready") == starts, 300, "the worker", worker)
            wait_until(lambda: len(hook.received) >= 2 and (records / "two.json").exists(), 60,
                       "the announcements left to send", worker)
        finally:
            stop(worker)
    sent = sorted(body["job"] for _, _, body in hook.received)
    print(f"worker SIGKILLed with 3 announcements unsent: after restarts, webhooks for jobs {sent}, on_done of the "
          f"hung job run {1 if record(records, 'hang one')['pid'] == hung['pid'] else 2} time(s)")
    assert sent == [job["id"] for job in rows(db)]  # each once
    assert record(records, "hang one")["pid"] == hung["pid"]  # the command that hung was not run again
    assert rows(db, "SELECT * FROM deliveries") == []
