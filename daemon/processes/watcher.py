"""The inbox watcher: a small always-on process that enqueues complete audio files.

It never imports torch or whisper, so it stays small (tens of MB) while the worker sleeps.
"""

from __future__ import annotations

import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil
from loguru import logger
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from daemon.files.folders import SETTINGS_FILE, SettingsError
from daemon.files.inputs import as_text, is_candidate, refusal, skipped_silently, unsupported_reason

POLL_SECONDS = 0.25

# How often the polling observer re-lists the inbox. Each pass stats every file in the tree, which
# on a network share is one round trip per file, so it should not be much faster than this; and it
# needs no more than this: a file is queued only after `quiet_seconds` (default 2 s) of stillness
# anyway, and the 60 s rescan stays as the backstop.
POLL_OBSERVER_SECONDS = 2.0

# Network file systems, by the type psutil reports (Linux: /proc/mounts; macOS: f_fstypename). A
# file another machine writes there never reaches inotify/FSEvents, so a native observer would
# sit silent. Linux FUSE mounts are "fuse.<program>"; macFUSE reports every FUSE mount as
# "macfuse"/"osxfuse", local or not, so sshfs on macOS is not recognised: set observer = "polling".
NETWORK_FILE_SYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smbfs", "smb3", "smb2", "afpfs", "webdav", "davfs", "fuse.davfs2",
    "fuse.sshfs", "sshfs", "9p", "v9fs", "fuse.rclone", "ceph", "fuse.ceph", "glusterfs",
    "fuse.glusterfs", "lustre", "gpfs", "beegfs", "afs", "fuse.s3fs", "fuse.gcsfuse",
})


class Partition(Protocol):
    """What network_fs needs of a mount-table entry (psutil's sdiskpart has both)."""

    @property
    def mountpoint(self) -> str: ...

    @property
    def fstype(self) -> str: ...


def network_fs(path: Path, partitions: Iterable[Partition] | None = None) -> str | None:
    """The file-system type of `path`'s mount if it is a network one (NETWORK_FILE_SYSTEMS), else None.

    The mount is the longest mount point containing `path.resolve()`; of two entries for the same
    point the later one is on top, as in the mount table. `partitions`: the mount table, by
    default psutil.disk_partitions(all=True)."""
    if partitions is None:
        partitions = psutil.disk_partitions(all=True)
    target = path.resolve()
    best: Partition | None = None
    for part in partitions:
        point = Path(part.mountpoint)
        if target.is_relative_to(point) and (best is None or len(point.parts) >= len(Path(best.mountpoint).parts)):
            best = part
    if best is None:
        return None
    fstype = best.fstype.lower()
    return fstype if fstype in NETWORK_FILE_SYSTEMS else None


def observer_for(
    inbox: Path, choice: str = "auto", partitions: Iterable[Partition] | None = None
) -> tuple[BaseObserver, str]:
    """The watchdog observer for `inbox`, and why, for the log.

    `choice` (config.OBSERVERS): "native" (inotify/FSEvents/...), "polling" (re-list the tree every
    POLL_OBSERVER_SECONDS), or "auto": polling when the inbox is on a network file system, which
    sends no file events, else native. `partitions`: as for network_fs."""
    native = "native observer"
    polling = f"polling observer (every {POLL_OBSERVER_SECONDS:g} s)"
    if choice == "native":
        return Observer(), f"{native}: set in the settings"
    if choice == "polling":
        return PollingObserver(timeout=POLL_OBSERVER_SECONDS), f"{polling}: set in the settings"
    try:
        fstype = network_fs(inbox, partitions)
    except OSError as e:  # the mount table is unreadable: events are the better guess
        return Observer(), f'{native}: cannot read the mount table ({e}); on a network share set observer = "polling"'
    if fstype is not None:
        why = f"{polling}: {inbox} is on {fstype}, which sends no file events"
        return PollingObserver(timeout=POLL_OBSERVER_SECONDS), why
    return Observer(), f"{native}: {inbox} is on a local file system"


@dataclass
class _Pending:
    size: int
    mtime_ns: int
    since: float  # monotonic time the size and mtime were last seen to change
    arrived: bool  # it appeared at its path while watched (created, moved in): maybe a new copy


# What a file's folders' settings files were when it was queued: (inode, size, mtime, ctime) of
# each folder's whisper-daemon.toml from the inbox down to the file's folder, None where there is none.
Stamp = tuple[tuple[int, int, int, int] | None, ...]


@dataclass(frozen=True)
class _Seen:
    """A file as it was handed to `enqueue` (or `reject`): a rescan skips it while this still holds."""

    size: int
    mtime_ns: int
    settings: Stamp


class Watcher:
    """Tracks candidate files until their size and mtime have held still for `quiet_seconds`.

    A rescan costs a stat per file: a file handed to `enqueue` is remembered (size, mtime and its
    folders' settings files), and only what changed since goes through `enqueue` again. What the
    watcher remembers is what the inbox holds now: a rescan forgets the files that are gone."""

    def __init__(
        self,
        inbox: Path,
        enqueue: Callable[[Path, bool], object],
        quiet_seconds: float = 2.0,
        rescan_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        reject: Callable[[Path, str], object] | None = None,
        observer: str = "auto",
    ) -> None:
        """`enqueue(path, arrived)`: queue a file that held still; `arrived` is True for one that
        appeared at its path while watched (see JobQueue.enqueue)."""
        self.inbox = inbox
        self.observer = observer  # config.OBSERVERS; see observer_for
        self.enqueue = enqueue
        self.reject = reject  # records why a file is not queued, so `status` shows it; None: log it
        self.quiet_seconds = quiet_seconds
        self.rescan_seconds = rescan_seconds
        self.clock = clock
        self._pending: dict[Path, _Pending] = {}
        self._seen: dict[Path, _Seen] = {}
        self._unsupported: set[Path] = set()  # told once each
        self._lock = threading.Lock()

    def notice(self, path: Path, arrived: bool = False) -> None:
        """A file may have changed (`arrived`: it appeared at its path): (re)start its quiet period."""
        if not self._wanted(path):
            return
        with self._lock:
            old = self._pending.pop(path, None)
            self._observe(path, arrived or (old is not None and old.arrived))

    def scan(self, root: Path | None = None) -> None:
        """Pick up files that arrived while nobody was watching, and files changed since they were
        queued; the rest cost a stat. A scan of the whole inbox also forgets the files that are no
        longer there. `root`: a folder that was just created or moved in, whose files all arrived."""
        stamps: dict[Path, Stamp] = {}
        listed = sorted((root or self.inbox).rglob("*"))
        for path in listed:
            if self._wanted(path):
                with self._lock:
                    if path not in self._pending and (root is not None or not self._unchanged(path, stamps)):
                        self._observe(path, root is not None)
        if root is None:
            present = set(listed)
            with self._lock:
                self._seen = {path: seen for path, seen in self._seen.items() if path in present}
                self._unsupported &= present

    def poll(self) -> list[Path]:
        """Enqueue every pending file that has been quiet long enough; return them."""
        now = self.clock()
        ready: list[tuple[Path, _Pending]] = []
        with self._lock:
            for path in list(self._pending):
                if self._observe(path, self._pending[path].arrived) and now - self._pending[path].since >= self.quiet_seconds:
                    ready.append((path, self._pending.pop(path)))
        for path, pending in ready:
            self._enqueue(path, pending)
        return [path for path, _ in ready]

    def run(self, stop: threading.Event) -> None:
        if not self.inbox.is_dir():
            self.inbox.mkdir(parents=True)
        observer, why = observer_for(self.inbox, self.observer)
        observer.schedule(_Handler(self), str(self.inbox), recursive=True)
        observer.start()
        logger.info("watching {} (quiet period {} s) with the {}", self.inbox, self.quiet_seconds, why)
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

    def _unchanged(self, path: Path, stamps: dict[Path, Stamp]) -> bool:
        """Whether `path` is as it was handed to enqueue: same size, mtime and settings files."""
        seen = self._seen.get(path)
        if seen is None:
            return False
        try:
            st = path.lstat()
        except OSError:
            return False
        return (st.st_size, st.st_mtime_ns) == (seen.size, seen.mtime_ns) and self._stamp(path.parent, stamps) == seen.settings

    def _stamp(self, folder: Path, stamps: dict[Path, Stamp]) -> Stamp:
        """The settings files that apply in `folder` as they are now (Stamp); `stamps` holds the
        folders already looked at in this scan, so each settings file costs one stat per scan."""
        stamp = stamps.get(folder)
        if stamp is None:
            try:
                st = (folder / SETTINGS_FILE).stat()
                own = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            except OSError:
                own = None
            inside = folder != self.inbox and folder.is_relative_to(self.inbox)
            stamp = stamps[folder] = (*(self._stamp(folder.parent, stamps) if inside else ()), own)
        return stamp

    def _observe(self, path: Path, arrived: bool) -> bool:
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
            self._pending[path] = _Pending(st.st_size, st.st_mtime_ns, self.clock(), arrived)
        return True

    def _enqueue(self, path: Path, pending: _Pending) -> None:
        """Queue a file that held still, or record why it cannot be; never let one file stop the watcher.
        Remember it once done, so that rescans pass over it until it changes."""
        try:
            seen = _Seen(pending.size, pending.mtime_ns, self._stamp(path.parent, {}))
            reason = refusal(path)
            if reason is None:
                try:
                    self.enqueue(path, pending.arrived)
                    self._seen[path] = seen
                    return
                except PermissionError as e:  # unreadable: tell the user, not only the log
                    reason = f"cannot read the file: {e.strerror}"
                except SettingsError as e:  # its folder's settings file is wrong
                    reason = str(e)
            if self.reject is None:
                logger.warning("not queued: {}: {}", as_text(path), reason)
            else:
                self.reject(path, reason)
            self._seen[path] = seen
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
            self.watcher.notice(Path(str(event.src_path)), arrived=True)

    def on_modified(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self.watcher.notice(Path(str(event.src_path)))

    on_closed = on_modified

    def on_moved(self, event: FileSystemEvent) -> None:
        # Browsers download to x.mp3.part and rename to x.mp3 when done.
        if event.is_directory:
            self.watcher.scan(Path(str(event.dest_path)))
        else:
            self.watcher.notice(Path(str(event.dest_path)), arrived=True)
