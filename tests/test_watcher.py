"""The inbox watcher: which names count, and that only complete files are queued."""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from loguru import logger
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from daemon.files.inputs import is_candidate
from daemon.processes.watcher import NETWORK_FILE_SYSTEMS, POLL_OBSERVER_SECONDS, Watcher, network_fs, observer_for
from tests.daemon_proc import log_text, start, stop, wait_until
from tests.speech import write_slowly


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("meeting.m4a", True), ("a.MP3", True), ("x.wav", True), ("x.flac", True), ("x.ogg", True),
        ("x.opus", True), ("x.aac", True), ("clip.mp4", True), ("clip.MOV", True), ("x.webm", True),
        ("memo.aiff", True), ("memo.AIF", True), ("memo.caf", True), ("call.amr", True), ("phone.3gp", True),
        ("old.wma", True), ("film.mkv", True), ("film.m4v", True),
        (".DS_Store", False), ("._meeting.m4a", False), (".hidden.mp3", False),
        ("song.mp3.part", False), ("song.mp3.crdownload", False), ("song.mp3.download", False),
        ("song.mp3.tmp", False), ("notes.txt", False), ("noext", False), ("meeting.srt", False),
    ],
)
def test_candidate_names(name: str, expected: bool) -> None:
    assert is_candidate(Path("/inbox") / name) is expected


class FakeClock:
    """Injected monotonic clock: quiet periods without real sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_file_is_queued_only_after_a_quiet_period(tmp_path: Path) -> None:
    clock = FakeClock()
    queued: list[Path] = []
    watcher = Watcher(tmp_path, lambda path, _arrived: queued.append(path), quiet_seconds=2.0, clock=clock)
    path = tmp_path / "a.wav"
    path.write_bytes(b"x" * 10)
    watcher.notice(path)
    clock.now += 1.9
    assert watcher.poll() == []
    with path.open("ab") as f:  # still being written: the quiet period starts again
        f.write(b"more")
    clock.now += 1.9
    assert watcher.poll() == []
    clock.now += 2.0
    assert watcher.poll() == [path] and queued == [path]
    clock.now += 10
    assert watcher.poll() == []  # not twice


def test_ignored_and_vanished_files_are_dropped(tmp_path: Path) -> None:
    clock = FakeClock()
    queued: list[Path] = []
    watcher = Watcher(tmp_path, lambda path, _arrived: queued.append(path), quiet_seconds=0, clock=clock)
    (tmp_path / "x.mp3.part").write_bytes(b"x")
    watcher.notice(tmp_path / "x.mp3.part")
    gone = tmp_path / "gone.wav"
    gone.write_bytes(b"x")
    watcher.notice(gone)
    gone.unlink()
    (tmp_path / "dir.mp3").mkdir()
    watcher.notice(tmp_path / "dir.mp3")
    clock.now += 1
    assert watcher.poll() == [] and queued == []


def test_startup_scan_finds_files_that_arrived_while_down(tmp_path: Path) -> None:
    clock = FakeClock()
    queued: list[Path] = []
    (tmp_path / "sub").mkdir()
    for name in ("a.m4a", "sub/b.mp3", ".DS_Store", "c.txt"):
        (tmp_path / name).write_bytes(b"x")
    watcher = Watcher(tmp_path, lambda path, _arrived: queued.append(path), quiet_seconds=1.0, clock=clock)
    watcher.scan()
    clock.now += 1.0
    assert sorted(watcher.poll()) == [tmp_path / "a.m4a", tmp_path / "sub" / "b.mp3"]


def test_a_format_we_do_not_take_is_logged_once_with_the_reason(tmp_path: Path) -> None:
    said: list[str] = []
    sink = logger.add(lambda message: said.append(str(message)), level="INFO", format="{message}")
    try:
        watcher = Watcher(tmp_path, lambda _path, _arrived: None, quiet_seconds=0, clock=FakeClock())
        (tmp_path / "talk.m4b").write_bytes(b"x")
        (tmp_path / ".DS_Store").write_bytes(b"x")
        for _ in range(3):  # events, then rescans
            watcher.notice(tmp_path / "talk.m4b")
            watcher.scan()
    finally:
        logger.remove(sink)
    (line,) = said
    assert "talk.m4b" in line and ".m4b is not a recording format" in line and ".m4a" in line


def test_a_rescan_queues_only_what_changed(tmp_path: Path) -> None:
    """Issue 22, point 5: a rescan hands `enqueue` only the files that changed since (size, mtime, or
    a settings file of their folders); the rest cost a stat. A file that could not be queued is
    tried again, and a file that is gone is forgotten."""
    clock = FakeClock()
    queued: list[Path] = []
    failing: set[Path] = set()

    def enqueue(path: Path, _arrived: bool) -> None:
        if path in failing:
            raise OSError("the database is unwritable")
        queued.append(path)

    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    names = ["a.wav", "b.wav", "c.wav", "sub/d.wav", "sub/deeper/e.wav", "f.wav"]
    for name in names:
        (tmp_path / name).write_bytes(name.encode())
    settings = tmp_path / "sub" / "whisper-daemon.toml"
    settings.write_text('language = "de"\n')
    failing.add(tmp_path / "f.wav")
    watcher = Watcher(tmp_path, enqueue, quiet_seconds=0, clock=clock)

    def rescan() -> list[str]:
        queued.clear()
        watcher.scan()
        watcher.poll()
        return sorted(path.relative_to(tmp_path).as_posix() for path in queued)

    assert rescan() == sorted(names[:-1])  # the first scan: every file but the one that failed
    failing.clear()
    assert rescan() == ["f.wav"]  # the unchanged ones are passed over, the failed one tried again
    assert rescan() == []
    with (tmp_path / "a.wav").open("ab") as f:  # a new size
        f.write(b" and more")
    st = (tmp_path / "b.wav").stat()
    os.utime(tmp_path / "b.wav", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a new mtime, same size
    st = settings.stat()
    settings.write_text('language = "fr"\n')  # same size, mtime put back: the inode's ctime still moves
    os.utime(settings, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert rescan() == ["a.wav", "b.wav", "sub/d.wav", "sub/deeper/e.wav"]
    (tmp_path / "c.wav").unlink()
    assert rescan() == [] and tmp_path / "c.wav" not in watcher._seen  # forgotten: the memory holds the inbox
    (tmp_path / "c.wav").write_bytes(b"c.wav")  # back again
    assert rescan() == ["c.wav"]


def test_the_unsupported_files_it_remembers_are_those_in_the_inbox(tmp_path: Path) -> None:
    """The set of files already said to be of a format we do not take does not grow for the life
    of the watcher: a rescan forgets those that are gone."""
    watcher = Watcher(tmp_path, lambda _path, _arrived: None, quiet_seconds=0, clock=FakeClock())
    for batch in range(3):
        files = [tmp_path / f"notes {batch} {i}.txt" for i in range(50)]
        for path in files:
            path.write_text("x")
        watcher.scan()
        for path in files:
            path.unlink()
    watcher.scan()
    assert len(watcher._unsupported) == 0


@pytest.fixture
def running_watcher(tmp_path: Path) -> Iterator[Callable[[], list[Path]]]:
    """A real watcher thread on tmp_path/inbox with a 1 s quiet period."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    queued: list[Path] = []
    lock = threading.Lock()

    def enqueue(path: Path, _arrived: bool) -> None:
        with lock:
            queued.append(path)

    stop = threading.Event()
    thread = threading.Thread(target=Watcher(inbox, enqueue, quiet_seconds=1.0).run, args=(stop,))
    thread.start()

    def snapshot() -> list[Path]:
        with lock:
            return list(queued)

    yield snapshot
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_rename_after_download_is_picked_up(tmp_path: Path, running_watcher: Callable[[], list[Path]]) -> None:
    partial = tmp_path / "inbox" / "talk.mp3.crdownload"
    partial.write_bytes(b"x" * 1000)
    final = partial.with_name("talk.mp3")
    partial.rename(final)
    assert wait_for(lambda: running_watcher() == [final])


def test_slowly_written_file_is_not_queued_before_it_is_complete(
    tmp_path: Path, running_watcher: Callable[[], list[Path]]
) -> None:
    path = tmp_path / "inbox" / "slow.wav"
    data = b"RIFF" + bytes(40_000)
    writer = threading.Thread(target=write_slowly, args=(data, path, 3.0))
    writer.start()
    while writer.is_alive():
        assert running_watcher() == [], "queued while still being written"
        writer.join(timeout=0.1)
    assert wait_for(lambda: running_watcher() == [path])
    assert path.stat().st_size == len(data)


def test_a_file_copied_or_moved_in_is_an_arrival_and_a_rescan_find_is_not(tmp_path: Path) -> None:
    """`enqueue` is told which files appeared at their path while watched (created, copied in with
    their mtime kept, moved in, or inside a moved-in folder): a copy that keeps the mtime may be a
    recording copied in again after its transcript was deleted (JobQueue.enqueue)."""
    inbox, elsewhere = tmp_path / "inbox", tmp_path / "elsewhere"
    (elsewhere / "folder").mkdir(parents=True)
    inbox.mkdir()
    (inbox / "already here.wav").write_bytes(b"x" * 100)
    for name in ("copied.wav", "moved.wav", "folder/inside.wav"):
        (elsewhere / name).write_bytes(name.encode())
    seen: dict[str, bool] = {}
    lock = threading.Lock()

    def enqueue(path: Path, arrived: bool) -> None:
        with lock:
            seen[path.relative_to(inbox).as_posix()] = arrived

    said: list[str] = []
    sink = logger.add(lambda message: said.append(str(message)), level="INFO", format="{message}")
    stop = threading.Event()
    thread = threading.Thread(target=Watcher(inbox, enqueue, quiet_seconds=0.5).run, args=(stop,))
    thread.start()
    try:
        assert wait_for(lambda: any("start-up scan done" in line for line in said))
        shutil.copy2(elsewhere / "copied.wav", inbox / "copied.wav")  # cp -p: the mtime kept
        (elsewhere / "moved.wav").rename(inbox / "moved.wav")
        (elsewhere / "folder").rename(inbox / "folder")
        assert wait_for(lambda: len(seen) == 4)
    finally:
        stop.set()
        thread.join(timeout=10)
        logger.remove(sink)
    assert seen == {"already here.wav": False, "copied.wav": True, "moved.wav": True, "folder/inside.wav": True}


class Mount(NamedTuple):
    """A mount-table entry as psutil.disk_partitions gives it (only the fields network_fs reads)."""

    mountpoint: str
    fstype: str


# A made-up mount table: the sandbox cannot mount NFS, so network_fs and observer_for are handed
# this instead of psutil's (their `partitions` parameter), the one probe they let tests replace.
MOUNTS = [
    Mount("/", "ext4"),
    Mount("/mnt/nas", "nfs4"),
    Mount("/mnt/nas/scratch", "tmpfs"),  # mounted inside the share: local again
    Mount("/mnt/nasty", "ext4"),  # shares a string prefix with /mnt/nas, not a path prefix
    Mount("/media/box", "ext4"),
    Mount("/media/box", "fuse.sshfs"),  # mounted over the first: the later entry is on top
]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/mnt/nas/inbox/a.wav", "nfs4"), ("/mnt/nas", "nfs4"), ("/mnt/nas/scratch/inbox", None),
        ("/mnt/nasty/inbox", None), ("/home/me/inbox", None), ("/media/box/inbox", "fuse.sshfs"),
    ],
)
def test_network_fs_goes_by_the_longest_mount_point_holding_the_path(path: str, expected: str | None) -> None:
    assert network_fs(Path(path), MOUNTS) == expected


def test_network_fs_reads_the_real_mount_table(tmp_path: Path) -> None:
    assert network_fs(tmp_path) in NETWORK_FILE_SYSTEMS | {None}  # psutil's table, whatever it holds here


def test_auto_polls_on_a_network_share_and_uses_events_elsewhere() -> None:
    observer, why = observer_for(Path("/mnt/nas/inbox"), "auto", MOUNTS)
    assert isinstance(observer, PollingObserver) and observer.timeout == POLL_OBSERVER_SECONDS
    assert "/mnt/nas/inbox is on nfs4" in why
    observer, why = observer_for(Path("/home/me/inbox"), "auto", MOUNTS)
    assert type(observer) is Observer and why.startswith("native")
    # an explicit choice wins over the mount table
    assert type(observer_for(Path("/mnt/nas/inbox"), "native", MOUNTS)[0]) is Observer
    assert isinstance(observer_for(Path("/home/me/inbox"), "polling", MOUNTS)[0], PollingObserver)


def test_polling_watcher_queues_a_file_written_after_it_started(tmp_path: Path) -> None:
    """The polling observer end to end, in a real watcher thread: no file events are needed."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    said: list[str] = []
    queued: list[Path] = []
    lock = threading.Lock()

    def enqueue(path: Path, _arrived: bool) -> None:
        with lock:
            queued.append(path)

    def snapshot() -> list[Path]:
        with lock:
            return list(queued)

    sink = logger.add(lambda message: said.append(str(message)), level="INFO", format="{message}")
    stop = threading.Event()
    watcher = Watcher(inbox, enqueue, quiet_seconds=0.5, observer="polling")  # rescans only each minute
    thread = threading.Thread(target=watcher.run, args=(stop,))
    thread.start()
    try:
        # write only after the start-up scan, so the polling observer is what has to find the file
        assert wait_for(lambda: any("start-up scan done" in line for line in said))
        assert any("polling observer" in line and "set in the settings" in line for line in said)
        path = inbox / "talk.m4a"
        path.write_bytes(b"x" * 1000)
        assert wait_for(lambda: snapshot() == [path])
    finally:
        stop.set()
        thread.join(timeout=10)
        logger.remove(sink)
    assert not thread.is_alive()


def test_a_file_name_cannot_forge_a_log_line(tmp_path: Path, daemon_env: dict[str, str]) -> None:
    """Issue 22: a real `watch` process queues files whose names hold a newline (followed by what
    looks like a log line of its own), a carriage return and an escape sequence: each message stays
    one line of watcher.log, starting with its own timestamp, the name shown with escapes."""
    inbox = Path(daemon_env["WHISPER_DAEMON_INBOX"])
    forged = "talk.wav\n2026-01-01T00:00:00.000+00:00 WARNING pid=1 the queue was deleted"
    for name in (f"{forged}.wav", "carriage\rreturn.wav", "bell \x1b[31mred.wav"):
        (inbox / name).write_bytes(name.encode())
    log = Path(daemon_env["WHISPER_DAEMON_LOG_DIR"]) / "watcher.log"
    watcher = start("watch", daemon_env)
    try:
        wait_until(lambda: log_text(log).count("queued job") >= 3, 60, "three files queued", watcher)
    finally:
        stop(watcher)
    lines = log_text(log).splitlines()
    assert lines and all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d{4} [A-Z]+ pid=", line) for line in lines)
    assert not any("the queue was deleted" in line and "queued job" not in line for line in lines)
    assert any("talk.wav\\n2026-01-01" in line for line in lines) and any("carriage\\rreturn" in line for line in lines)
    assert "\x1b" not in log_text(log) and "\\x1b[31mred" in log_text(log)
