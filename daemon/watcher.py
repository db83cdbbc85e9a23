"""The inbox watcher: a small always-on process that enqueues complete audio files.

It never imports torch or whisper, so it stays small (tens of MB) while the worker sleeps.
"""

from __future__ import annotations

import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from daemon.folders import SettingsError
from daemon.inputs import as_text, is_candidate, refusal, skipped_silently, unsupported_reason

POLL_SECONDS = 0.25


@dataclass
class _Pending:
    size: int
    mtime_ns: int
    since: float  # monotonic time the size and mtime were last seen to change


class Watcher:
    """Tracks candidate files until their size and mtime have held still for `quiet_seconds`."""

    def __init__(
        self,
        inbox: Path,
        enqueue: Callable[[Path], object],
        quiet_seconds: float = 2.0,
        rescan_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        reject: Callable[[Path, str], object] | None = None,
    ) -> None:
        self.inbox = inbox
        self.enqueue = enqueue
        self.reject = reject  # records why a file is not queued, so `status` shows it; None: log it
        self.quiet_seconds = quiet_seconds
        self.rescan_seconds = rescan_seconds
        self.clock = clock
        self._pending: dict[Path, _Pending] = {}
        self._unsupported: set[Path] = set()  # told once each
        self._lock = threading.Lock()

    def notice(self, path: Path) -> None:
        """A file may have changed: (re)start its quiet period."""
        if not self._wanted(path):
            return
        with self._lock:
            self._pending.pop(path, None)
            self._observe(path)

    def scan(self, root: Path | None = None) -> None:
        """Pick up files that arrived while nobody was watching (or inside a moved-in folder)."""
        for path in sorted((root or self.inbox).rglob("*")):
            if self._wanted(path):
                with self._lock:
                    if path not in self._pending:
                        self._observe(path)

    def poll(self) -> list[Path]:
        """Enqueue every pending file that has been quiet long enough; return them."""
        now = self.clock()
        ready: list[Path] = []
        with self._lock:
            for path in list(self._pending):
                if self._observe(path) and now - self._pending[path].since >= self.quiet_seconds:
                    del self._pending[path]
                    ready.append(path)
        for path in ready:
            self._enqueue(path)
        return ready

    def run(self, stop: threading.Event) -> None:
        if not self.inbox.is_dir():
            self.inbox.mkdir(parents=True)
        observer = Observer()
        observer.schedule(_Handler(self), str(self.inbox), recursive=True)
        observer.start()
        logger.info("watching {} (quiet period {} s)", self.inbox, self.quiet_seconds)
        try:
            self.scan()
            logger.info("start-up scan done: {} file(s) to check", len(self._pending))
            next_scan = self.clock() + self.rescan_seconds
            while not stop.wait(POLL_SECONDS):
                self.poll()
                if self.clock() >= next_scan:
                    self.scan()
                    next_scan = self.clock() + self.rescan_seconds
        finally:
            observer.stop()
            observer.join(timeout=5)

    def _wanted(self, path: Path) -> bool:
        """A recording to track. A file of a format we don't take is logged, once, with the reason."""
        if is_candidate(path):
            return True
        if not skipped_silently(path) and path not in self._unsupported and path.is_file():
            self._unsupported.add(path)
            logger.info("not transcribing {}: {}", as_text(path), unsupported_reason(path))
        return False

    def _observe(self, path: Path) -> bool:
        """Record the current size and mtime; drop the file if it is gone or a folder.

        lstat: a symbolic link is tracked as itself (it is refused later, never followed), and a
        link loop is not an error here."""
        try:
            st = path.lstat()
        except OSError:
            self._pending.pop(path, None)
            return False
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            self._pending.pop(path, None)  # a folder, even one named x.mp3: its files are the inputs
            return False
        old = self._pending.get(path)
        if old is None or (old.size, old.mtime_ns) != (st.st_size, st.st_mtime_ns):
            self._pending[path] = _Pending(st.st_size, st.st_mtime_ns, self.clock())
        return True

    def _enqueue(self, path: Path) -> None:
        """Queue a file that held still, or record why it cannot be; never let one file stop the watcher."""
        try:
            reason = refusal(path)
            if reason is None:
                try:
                    self.enqueue(path)
                    return
                except PermissionError as e:  # unreadable: tell the user, not only the log
                    reason = f"cannot read the file: {e.strerror}"
                except SettingsError as e:  # its folder's settings file is wrong
                    reason = str(e)
            if self.reject is None:
                logger.warning("not queued: {}: {}", as_text(path), reason)
            else:
                self.reject(path, reason)
        except FileNotFoundError:  # deleted or moved away while it was being looked at
            logger.warning("{} vanished before it could be queued", as_text(path))
        except Exception:  # e.g. the database is unwritable, an I/O error: the next rescan tries again
            logger.exception("could not queue {}", as_text(path))


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher

    def on_created(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            self.watcher.scan(Path(str(event.src_path)))
        else:
            self.watcher.notice(Path(str(event.src_path)))

    def on_modified(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self.watcher.notice(Path(str(event.src_path)))

    on_closed = on_modified

    def on_moved(self, event: FileSystemEvent) -> None:
        # Browsers download to x.mp3.part and rename to x.mp3 when done.
        if event.is_directory:
            self.watcher.scan(Path(str(event.dest_path)))
        else:
            self.watcher.notice(Path(str(event.dest_path)))
