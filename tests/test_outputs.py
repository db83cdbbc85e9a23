"""Output files: their names (one stem for every format, cut to fit) and atomic writes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.files.outputs import NAME_MAX, names, write_atomic
from daemon.formats import FORMATS
from tests.conftest import REPO


def test_names_give_every_format_one_stem_cut_for_the_longest_suffix(tmp_path: Path) -> None:
    candidates = names(tmp_path, "talk", FORMATS)
    assert next(candidates) == {fmt: tmp_path / f"talk.{fmt}" for fmt in FORMATS}
    assert next(candidates) == {fmt: tmp_path / f"talk (2).{fmt}" for fmt in FORMATS}
    long = "a" * 300
    assert next(names(tmp_path, long, ("srt",))) == {"srt": tmp_path / f"{'a' * 251}.srt"}  # 255 bytes
    candidates = names(tmp_path, long, FORMATS)
    assert next(candidates) == {fmt: tmp_path / f"{'a' * 250}.{fmt}" for fmt in FORMATS}  # .json takes 5 of 255
    assert next(candidates) == {fmt: tmp_path / f"{'a' * 246} (2).{fmt}" for fmt in FORMATS}
    (srt,) = next(names(tmp_path, "é" * 200, ("srt",))).values()
    assert srt.name == "é" * 125 + ".srt" and len(os.fsencode(srt.name)) == NAME_MAX - 1  # é not cut in half


def test_write_atomic_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out" / "a.srt"
    write_atomic(target, "old")
    write_atomic(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert os.listdir(target.parent) == ["a.srt"]


def test_write_atomic_failure_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a.srt"
    write_atomic(target, "old")

    def boom(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.srt"]


@pytest.mark.parametrize(("umask", "mode"), [(0o002, 0o664), (0o077, 0o600)])
def test_transcripts_get_the_users_umask(tmp_path: Path, umask: int, mode: int) -> None:
    """In a process of its own: the umask is process-wide, and read once at import."""
    target = tmp_path / "out" / "a.srt"
    code = ("import os, sys; from pathlib import Path; from daemon.files.outputs import _umask, write_atomic; "
            "write_atomic(Path(sys.argv[1]), 'words'); "
            "print(_umask(), _umask('/no/such/status'), os.umask(0))")  # /proc, then the fallback
    out = subprocess.run([sys.executable, "-c", code, str(target)], cwd=REPO, umask=umask, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert stat.S_IMODE(target.stat().st_mode) == mode
    assert out.split() == [str(umask)] * 3  # both ways read it, and the fallback put it back
