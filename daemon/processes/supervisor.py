"""`run`: the watcher and the worker (and the status page, with `web`) as child processes of one
foreground process.

Separate processes keep the always-on watcher free of torch, and let a crashed worker be
restarted without losing the watcher. Children get every resolved setting through the
environment, unset ones and the config file's path included (Config.to_env), so they see exactly
the config this process built, whatever the default config.toml says.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from loguru import logger

from daemon.config import Config

PARENT_PID_ENV = "WHISPER_DAEMON_PARENT_PID"  # tells a child to stop if `run` disappears
EXIT_CONFIG = 78  # EX_CONFIG: restarting cannot help (unknown model, bad setting), so the supervisor stops too
# EX_TEMPFAIL: start me again later: the worker outgrew its memory cap between jobs, or its model must
# be downloaded and the network is not up yet. Restarted like any other exit, with the backoff.
EXIT_TEMPFAIL = 75
STOP_TIMEOUT_SECONDS = 20.0  # launchd's default ExitTimeOut
RESTART_MIN_SECONDS = 1.0
RESTART_MAX_SECONDS = 60.0
HEALTHY_SECONDS = 30.0  # a child that lived this long resets its restart backoff


@dataclass
class _Child:
    command: str
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = RESTART_MIN_SECONDS
    restart_at: float = field(default=0.0)


class Supervisor:
    def __init__(self, cfg: Config, stop: threading.Event) -> None:
        self.env = {**os.environ, **cfg.to_env(), PARENT_PID_ENV: str(os.getpid())}
        self.stop = stop
        self.children = [_Child("watch"), _Child("work"), *([_Child("web")] if cfg.web else [])]

    def run(self) -> int:
        for child in self.children:
            self._start(child)
        try:
            while not self.stop.wait(0.2):
                for child in self.children:
                    code = self._check(child)
                    if code is not None:
                        return code
        finally:
            self._stop_all()
        return 0

    def _start(self, child: _Child) -> None:
        # Own session: a terminal's Ctrl-C reaches only us, and we stop the children in order.
        child.proc = subprocess.Popen([sys.executable, "-m", "daemon", child.command], env=self.env,
                                      start_new_session=True)
        child.started = time.monotonic()
        logger.info("started {} (pid {})", child.command, child.proc.pid)

    def _check(self, child: _Child) -> int | None:
        """Restart a child that died, with capped backoff; an exit code to stop with, if fatal."""
        now = time.monotonic()
        if child.proc is None:
            if now >= child.restart_at:
                self._start(child)
            return None
        code = child.proc.poll()
        if code is None:
            return None
        if code == EXIT_CONFIG:
            logger.error("{} cannot start with this configuration (see above); stopping", child.command)
            return code
        if now - child.started >= HEALTHY_SECONDS:
            child.backoff = RESTART_MIN_SECONDS
        logger.warning("{} exited with code {}; restarting in {:.0f} s", child.command, code, child.backoff)
        child.proc, child.restart_at = None, now + child.backoff
        child.backoff = min(child.backoff * 2, RESTART_MAX_SECONDS)
        return None

    def _stop_all(self) -> None:
        running = [c.proc for c in self.children if c.proc is not None and c.proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for proc in running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("pid {} did not stop in {} s; killing it", proc.pid, STOP_TIMEOUT_SECONDS)
                proc.kill()
                proc.wait()
