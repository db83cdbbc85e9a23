"""The inbox watcher: a small always-on process that enqueues complete audio files.

It never imports torch or whisper, so it stays small (tens of MB) while the worker sleeps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

AUDIO_EXTENSIONS = frozenset(
    {".m4a", ".mp3", ".wav", ".flac", ".ogg", ".opus", ".aac", ".mp4", ".mov", ".webm"}
)
# Names browsers and copy tools use while a file is still being written.
PARTIAL_SUFFIXES = (".part", ".crdownload", ".download", ".tmp")
POLL_SECONDS = 0.25


def is_candidate(path: Path) -> bool:
    """Audio or video by extension; hidden files (.DS_Store, ._*) and partial downloads are not."""
    name = path.name
    if name.startswith(".") or name.lower().endswith(PARTIAL_SUFFIXES):
        return False
    return path.suffix.lower() in AUDIO_EXTENSIONS


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
    ) -> None:
        self.inbox = inbox
        self.enqueue = enqueue
        self.quiet_seconds = quiet_seconds
        self.rescan_seconds = rescan_seconds
        self.clock = clock
        self._pending: dict[Path, _Pending] = {}
        self._lock = threading.Lock()

    def notice(self, path: Path) -> None:
        """A file may have changed: (re)start its quiet period."""
        if not is_candidate(path):
            return
        with self._lock:
            self._pending.pop(path, None)
            self._observe(path)

    def scan(self, root: Path | None = None) -> None:
        """Pick up files that arrived while nobody was watching (or inside a moved-in folder)."""
        for path in sorted((root or self.inbox).rglob("*")):
            if is_candidate(path):
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
            next_scan = self.clock() + self.rescan_seconds
            while not stop.wait(POLL_SECONDS):
                self.poll()
                if self.clock() >= next_scan:
                    self.scan()
                    next_scan = self.clock() + self.rescan_seconds
        finally:
            observer.stop()
            observer.join(timeout=5)

    def _observe(self, path: Path) -> bool:
        """Record the current size and mtime; drop the file if it is gone or not a regular file."""
        try:
            stat = path.stat()
        except OSError:
            self._pending.pop(path, None)
            return False
        if not path.is_file():
            self._pending.pop(path, None)
            return False
        old = self._pending.get(path)
        if old is None or (old.size, old.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
            self._pending[path] = _Pending(stat.st_size, stat.st_mtime_ns, self.clock())
        return True

    def _enqueue(self, path: Path) -> None:
        try:
            self.enqueue(path)
        except OSError as e:
            # Vanished or unreadable between the check and the hash: the next event or scan retries.
            logger.warning("could not enqueue {}: {}", path, e)


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
