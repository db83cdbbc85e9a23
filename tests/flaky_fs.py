"""A real FUSE file system for the storage-fault tests: a pass-through of a backing folder whose
faults a test switches on and off while a daemon reads and writes through it.

    python -m tests.flaky_fs BACKING MOUNTPOINT CONTROL

CONTROL is a JSON file, read again whenever it changes, with any of:
  fail_after  reads of a file at or past this byte offset fail (a share that drops mid-file)
  errno       the error those reads get (default EIO)
  read_delay  seconds each read waits first (a slow share) ...
  slow_until  ... until this time (time.time()), if given
  name_max    longest name, in bytes, that may be created (eCryptfs: 143); statfs says so too

The kernel hands every read to this process, so the daemon sees the error exactly as it would
from a network file system: from read(2), in the middle of a file that opened fine. Run as a
process of its own, with `fusermount3 -u` (or its exit) as the way out.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
HOW_TO_GET_IT = ("the storage-fault tests need FUSE: /dev/fuse, Debian's fuse3 package (libfuse3; .ci/run installs "
                 "it) and the mfusepy wheel (`make setup`), and the right to mount (root, or a fuse group)")


@contextmanager
def mounted(backing: Path, mountpoint: Path, control: Path, faults: dict[str, Any] | None = None) -> Iterator[Path]:
    """`backing` served at `mountpoint` by a flaky_fs process, with `faults` to begin with; set
    others with `set_faults(control, …)`. A mount that cannot be made fails the test, never skips it:
    a fault test that does not run must be seen."""
    backing.mkdir(parents=True, exist_ok=True)
    mountpoint.mkdir(parents=True, exist_ok=True)
    set_faults(control, faults or {})
    log = control.with_suffix(".log")
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tests.flaky_fs", str(backing), str(mountpoint), str(control)],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not os.path.ismount(mountpoint):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait(timeout=30)
            pytest.fail(f"could not mount a FUSE file system at {mountpoint}: {log.read_text()!r}. {HOW_TO_GET_IT}",
                        pytrace=False)
        time.sleep(0.05)
    try:
        yield mountpoint
    finally:
        set_faults(control, {})
        unmount = shutil.which("fusermount3")
        subprocess.run([unmount, "-u", "-z", str(mountpoint)] if unmount else ["umount", "-l", str(mountpoint)],
                       timeout=30, check=False)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def set_faults(control: Path, faults: dict[str, Any]) -> None:
    """Switch faults on or off (see the module's docstring); the file system reads them at its next call."""
    tmp = control.with_suffix(".tmp")
    tmp.write_text(json.dumps(faults))
    os.replace(tmp, control)


class Flaky:
    use_ns = True

    def __init__(self, backing: Path, control: Path) -> None:
        self.backing = backing
        self.control = control
        self._seen: tuple[float, dict[str, Any]] = (-1.0, {})

    def faults(self) -> dict[str, Any]:
        try:
            mtime = self.control.stat().st_mtime_ns
        except FileNotFoundError:
            return {}
        if mtime != self._seen[0]:
            try:
                self._seen = (mtime, json.loads(self.control.read_text() or "{}"))
            except ValueError:  # caught half-written: the next read sees it whole
                return self._seen[1]
        return self._seen[1]

    def _real(self, path: str) -> str:
        return str(self.backing) + path

    def _check_name(self, path: str) -> None:
        limit = self.faults().get("name_max")
        if limit is not None and len(os.fsencode(os.path.basename(path))) > limit:
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))

    # ---------------------------------------------------------------- reading

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        st = os.lstat(self._real(path))
        return {key: getattr(st, key) for key in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino",
                                                  "st_atime_ns", "st_mtime_ns", "st_ctime_ns")} | {
            "st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns, "st_ctime": st.st_ctime_ns}

    def readdir(self, path: str, fh: Any) -> list[str]:
        return [".", "..", *os.listdir(self._real(path))]

    def readlink(self, path: str) -> str:
        return os.readlink(self._real(path))

    def open(self, path: str, flags: int) -> int:
        return os.open(self._real(path), flags)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        faults = self.faults()
        if faults.get("read_delay") and time.time() < faults.get("slow_until", float("inf")):
            time.sleep(faults["read_delay"])
        fail_after = faults.get("fail_after")
        if fail_after is not None and offset + size > fail_after:
            if offset >= fail_after:
                code = faults.get("errno", errno.EIO)
                raise OSError(code, os.strerror(code))
            size = fail_after - offset  # the bytes before the fault still arrive; the next read fails
        return os.pread(fh, size, offset)

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self._real(path))
        found = {key: getattr(st, key) for key in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                                                   "f_files", "f_ffree", "f_favail", "f_flag", "f_namemax")}
        if (limit := self.faults().get("name_max")) is not None:
            found["f_namemax"] = limit
        return found

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0

    # ---------------------------------------------------------------- writing

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        self._check_name(path)
        return os.open(self._real(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: Any = None) -> None:
        os.truncate(self._real(path), length)

    def flush(self, path: str, fh: int) -> int:
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        os.fsync(fh)
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: Any) -> int:
        return 0

    def mkdir(self, path: str, mode: int) -> None:
        self._check_name(path)
        os.mkdir(self._real(path), mode)

    def rmdir(self, path: str) -> None:
        os.rmdir(self._real(path))

    def unlink(self, path: str) -> None:
        os.unlink(self._real(path))

    def rename(self, old: str, new: str) -> None:
        self._check_name(new)
        os.rename(self._real(old), self._real(new))

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._real(path), mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        os.chown(self._real(path), uid, gid)

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> None:
        os.utime(self._real(path), ns=times) if times else os.utime(self._real(path))


def main() -> None:
    import mfusepy as fuse  # only in the file system's process: a test without it fails saying why

    class Operations(Flaky, fuse.Operations):  # type: ignore[misc]
        pass

    backing, mountpoint, control = (Path(arg) for arg in sys.argv[1:4])
    # Foreground, several threads (reads of the daemon and stats of the test at once), root's
    # mount visible to every process, and no page cache: every read reaches this process, as on a share.
    fuse.FUSE(Operations(backing.resolve(), control.resolve()), str(mountpoint), foreground=True, nothreads=False,
              allow_other=True, default_permissions=True, direct_io=True)


if __name__ == "__main__":
    main()
