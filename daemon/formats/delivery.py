"""Telling the user a transcript is ready: a desktop notification, a command run with the output paths,
a webhook. Each is off by default. The worker hands a `Ready` to `announce()`, which returns at once;
one background thread does the work, so a hung command or a slow server never holds up transcription,
and whatever fails is logged, never raised.

What is still to send is also kept in the queue's database (queue/deliveries.py): each step first
`take`s its row, so that none is sent twice, and a worker that was killed sends the rest when it
starts again. The thread's own queue is bounded; what does not fit waits in the database and is
fetched (`backlog`) once the thread has caught up."""

from __future__ import annotations

import base64
import contextlib
import html
import http.client
import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from daemon.config import ENV_PREFIX

TITLE = "Transcript ready"
NOTIFY_TIMEOUT_SECONDS = 10.0  # notify-send and osascript return at once; only a hung desktop session waits longer
COMMAND_TIMEOUT_SECONDS = 600.0  # 10 minutes: room for a script that uploads or post-processes a long transcript
WEBHOOK_TIMEOUT_SECONDS = 30.0  # per socket operation (connect, send, each read), as urllib counts it
# Text passed as arguments to the run handler, never spliced into AppleScript source: a file named
# `" & (do shell script "…") & "` stays a file name.
OSASCRIPT = ["osascript", "-e", "on run argv",
             "-e", "display notification (item 1 of argv) with title (item 2 of argv)", "-e", "end run", "--"]
NOTIFY_SEND = "notify-send"
NOTIFY_SEND_PLATFORMS = ("linux", "freebsd", "openbsd", "netbsd")  # desktops that speak freedesktop notifications
MAX_PENDING = 1000  # announcements held in memory; more wait in the database (a flood of duplicates, a hung command)


@dataclass(frozen=True)
class Ready:
    """What is announced: a job whose transcript files are all written."""
    job_id: int
    source: Path  # the recording
    outputs: tuple[Path, ...]  # every file written for it, in the order of the formats setting
    language: str | None
    duplicate_of: int | None = None  # the job whose transcript this one's reuses


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """urllib would follow a redirected POST as a GET without its body (and with our Authorization
    header): count a redirect as the failure it is for a webhook."""

    def redirect_request(self, *_: object) -> None:
        return None


class Delivery:
    def __init__(self, notify: bool, on_done: str | None, webhook: str | None, platform: str = sys.platform,
                 command_timeout: float = COMMAND_TIMEOUT_SECONDS,
                 take: Callable[[int, str], bool] = lambda job_id, kind: True,
                 backlog: Callable[[], list[Ready]] = list, max_pending: int = MAX_PENDING) -> None:
        """`take(job id, kind)`: whether that announcement is still to be sent, marking it sent;
        `backlog()`: every announcement still to be sent (both: the queue's database)."""
        self.notify = notify
        self.on_done = shlex.split(on_done) if on_done else None  # config validation has checked it splits
        self.webhook = webhook
        self.platform = platform
        self.command_timeout = command_timeout  # tests pass a short one
        self._gave_up_notifying = False  # no notifier here: said once, not tried again
        self._running: subprocess.Popen[bytes] | None = None  # the on_done command in flight, for close()
        self._take = take
        self._backlog = backlog
        # None: stop once what is before it is done
        self._pending: queue.Queue[Ready | None] = queue.Queue(maxsize=max_pending)
        self._overflowed = threading.Event()  # some announcements wait in the database only
        self._abandoned = threading.Event()  # close() ran out of time: stop now
        self._steps: dict[str, Callable[[Ready], None]] = {kind: step for kind, step, on in (
            ("notify", self._notify, notify), ("command", self._run_command, on_done), ("webhook", self._post, webhook))
            if on}
        self._thread = threading.Thread(target=self._serve, name="delivery", daemon=True)
        if self._steps:
            self._thread.start()

    @property
    def kinds(self) -> tuple[str, ...]:
        """What each finished job is announced by: kept with the job until sent (JobQueue.finish)."""
        return tuple(self._steps)

    def announce(self, ready: Ready, *, again: bool = False) -> None:
        """Queue the announcement and return at once. `again`: fetched back from the store (said before)."""
        if not self._steps:
            return
        try:
            self._pending.put_nowait(ready)
        except queue.Full:
            if not (again or self._overflowed.is_set()):
                logger.warning("{} announcements are waiting to be sent; the next ones wait in the queue's database",
                               self._pending.maxsize)
            self._overflowed.set()

    def close(self, timeout: float) -> None:
        """Deliver what is pending, for up to `timeout` seconds; then stop the command in flight, if any,
        and log what was left undelivered."""
        if not self._thread.is_alive():
            return
        try:
            self._pending.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        if not self._thread.is_alive():
            return
        self._abandoned.set()
        running = self._running
        if running is not None:
            _kill_group(running)
        logger.warning("stopped announcing after {:g} s: {} transcript(s) left unannounced, besides the one in hand",
                       timeout, max(self._pending.qsize() - 1, 0))  # - 1: the stop marker

    def notification_command(self, ready: Ready) -> list[str] | None:
        """The notifier's argv for this platform, or None if notifications are off or there is none."""
        if not self.notify:
            return None
        body = f"{ready.source.name} ({ready.language})" if ready.language else ready.source.name
        if self.platform == "darwin":
            return [*OSASCRIPT, body, TITLE]
        if self.platform.startswith(NOTIFY_SEND_PLATFORMS):
            # "--": a file name starting with "-" is not an option. The body is markup to notification
            # servers (<b>, <a href>, &amp;): a file name's < > & are escaped, so they show as typed.
            return [NOTIFY_SEND, "--", TITLE, html.escape(body, quote=False)]
        return None

    def _serve(self) -> None:
        while (ready := self._next()) is not None and not self._abandoned.is_set():
            for kind, step in self._steps.items():
                if self._abandoned.is_set():
                    break
                try:
                    if self._take(ready.job_id, kind):  # not sent yet, and now never again
                        step(ready)
                except Exception:  # a bug in one step, or no database, must not end the thread or skip the others
                    logger.exception("job {}: announcing the transcript failed", ready.job_id)

    def _next(self) -> Ready | None:
        if self._pending.empty() and self._overflowed.is_set():  # caught up: fetch what did not fit
            self._overflowed.clear()
            try:
                for ready in self._backlog():
                    self.announce(ready, again=True)
            except Exception:
                logger.exception("cannot read the announcements still to send; they are sent at the next start")
        return self._pending.get()

    def _notify(self, ready: Ready) -> None:
        if self._gave_up_notifying:
            return
        argv = self.notification_command(ready)
        if argv is None:
            self._gave_up_notifying = True
            logger.warning("no desktop notifications on {}: only macOS and Linux have them; turn notify off",
                           self.platform)
            return
        if shutil.which(argv[0]) is None:
            self._gave_up_notifying = True
            hint = ("install libnotify-bin (Debian, Ubuntu) or libnotify (Fedora, Arch)" if argv[0] == NOTIFY_SEND
                    else "it comes with macOS: add /usr/bin to the daemon's PATH")
            logger.warning("no desktop notifications: {} is not on PATH; {}, or turn notify off", argv[0], hint)
            return
        try:
            done = subprocess.run(argv, shell=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, timeout=NOTIFY_TIMEOUT_SECONDS)
        except (OSError, subprocess.TimeoutExpired) as e:
            logger.warning("job {}: desktop notification failed: {}", ready.job_id, e)
            return
        if done.returncode != 0:
            logger.warning("job {}: desktop notification failed: {} exited with {}: {}", ready.job_id, argv[0],
                           done.returncode, _last_line(done.stderr))

    def _run_command(self, ready: Ready) -> None:
        assert self.on_done is not None
        program = self.on_done[0]
        # Not the daemon's own WHISPER_DAEMON_* settings: they would configure a whisper-daemon the
        # command starts, and one may hold the webhook's password.
        env = {name: value for name, value in os.environ.items() if not name.startswith(ENV_PREFIX)}
        env |= {"TRANSCRIPT_JOB_ID": str(ready.job_id), "TRANSCRIPT_SOURCE": str(ready.source),
                "TRANSCRIPT_LANGUAGE": ready.language or ""}
        try:
            # A session of its own, so that a timeout or close() stops the whole group: a script's children too.
            proc = subprocess.Popen([*self.on_done, *map(str, ready.outputs)], shell=False, env=env,
                                    cwd=ready.outputs[0].parent if ready.outputs else None,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    start_new_session=True)
        except OSError as e:
            logger.warning("job {}: cannot run on_done command {}: {}", ready.job_id, program, e.strerror or e)
            return
        self._running = proc
        with proc:  # closes the pipe and reaps the process on every way out
            try:
                _, err = proc.communicate(timeout=self.command_timeout)
            except subprocess.TimeoutExpired as e:
                _kill_group(proc)
                logger.warning("job {}: on_done command {} was still running after {:g} s; stopped it. Its last "
                               "words: {}", ready.job_id, program, self.command_timeout, _last_line(e.stderr))
                return
            finally:
                self._running = None
        if proc.returncode != 0 and not self._abandoned.is_set():  # if it is, close() stopped it, and said so
            logger.warning("job {}: on_done command {} exited with {}: {}", ready.job_id, program, proc.returncode,
                           _last_line(err))

    def _post(self, ready: Ready) -> None:
        assert self.webhook is not None
        url, headers = _without_credentials(self.webhook)
        body = json.dumps({"job": ready.job_id, "source": str(ready.source), "outputs": [str(p) for p in ready.outputs],
                           "language": ready.language, "duplicate_of": ready.duplicate_of}).encode()
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json", **headers})
        opener = urllib.request.build_opener(_RefuseRedirects)
        try:
            with opener.open(request, timeout=WEBHOOK_TIMEOUT_SECONDS):
                pass
        except urllib.error.HTTPError as e:  # any answer but 2xx
            e.close()
            logger.warning("job {}: webhook {} answered {} {}", ready.job_id, _shown(url), e.code, e.reason)
        except (OSError, http.client.HTTPException) as e:  # refused, unreachable, timed out, TLS, not HTTP
            logger.warning("job {}: webhook {} failed: {}", ready.job_id, _shown(url),
                           getattr(e, "reason", None) or f"{type(e).__name__}: {e}")


def _without_credentials(url: str) -> tuple[str, dict[str, str]]:
    """The URL without user:password@, and the Basic Authorization header that carries them instead
    (urllib takes no credentials from the URL)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url, {}
    netloc = parts.netloc.rpartition("@")[2]
    user = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), {
        "Authorization": "Basic " + base64.b64encode(user.encode()).decode()}


def _shown(url: str) -> str:
    """The URL as logged: no query, which often carries a token (credentials are gone already)."""
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(query="", fragment=""))


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:  # not reaped yet, so its pid (its group's id) cannot have been reused
        with contextlib.suppress(ProcessLookupError):  # the whole group ended just now
            os.killpg(proc.pid, signal.SIGKILL)


def _last_line(stderr: bytes | None) -> str:
    lines = (stderr or b"").decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "(nothing on stderr)"
