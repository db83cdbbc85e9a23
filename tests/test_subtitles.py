"""SRT output: valid for an independent parser, global monotonic times, atomic writes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import srt

from daemon.transcript import Segment
from daemon.subtitles import render, timestamp, write_atomic
from tests.conftest import REPO


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "00:00:00,000"), (1.2345, "00:00:01,234"), (61.5, "00:01:01,500"), (3725.0099, "01:02:05,010"),
     (-0.1, "00:00:00,000")],
)
def test_timestamp(seconds: float, text: str) -> None:
    assert timestamp(seconds) == text


def test_render_parses_and_keeps_times_increasing() -> None:
    segments = [
        Segment(0.0, 2.5, " Hello there."),
        Segment(2.4, 3.0, "Overlapping."),
        Segment(3.0, 4.0, "   "),
        Segment(3605.0, 3607.25, "An hour\n\nlater."),
    ]
    cues = list(srt.parse(render(segments)))
    assert [c.content for c in cues] == ["Hello there.", "Overlapping.", "An hour later."]
    assert [c.index for c in cues] == [1, 2, 3]
    assert cues[1].start.total_seconds() == 2.5  # starts when the one before ends
    assert cues[-1].start.total_seconds() == 3605.0


def test_a_cue_lasts_at_least_one_frame_and_empty_or_zero_length_ones_are_dropped() -> None:
    frame = timedelta(milliseconds=40)  # one frame of 25 fps video
    segments = [
        Segment(1.0, 1.0, "Zero length."),
        Segment(1.2, 1.1, "Ends before it starts."),
        Segment(1.5, 2.0, ""),
        Segment(2.0, 2.01, "Short."),
        Segment(2.02, 2.03, "Short, right after."),
        Segment(2.0305, 2.0306, "Shorter than the rounding."),
        Segment(2.1, 3.0, "Long."),
    ]
    cues = list(srt.parse(render(segments)))
    assert [c.content for c in cues] == ["Short.", "Short, right after.", "Shorter than the rounding.", "Long."]
    assert all(c.end - c.start >= frame for c in cues)
    for prev, cue in zip(cues, cues[1:]):
        assert prev.start < prev.end <= cue.start
    assert cues[0].start == timedelta(seconds=2) and cues[-1].end == timedelta(seconds=3)


def test_empty_transcript_is_an_empty_file() -> None:
    assert render([]) == ""


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
    code = ("import os, sys; from pathlib import Path; from daemon.subtitles import _umask, write_atomic; "
            "write_atomic(Path(sys.argv[1]), 'words'); "
            "print(_umask(), _umask('/no/such/status'), os.umask(0))")  # /proc, then the fallback
    out = subprocess.run([sys.executable, "-c", code, str(target)], cwd=REPO, umask=umask, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert stat.S_IMODE(target.stat().st_mode) == mode
    assert out.split() == [str(umask)] * 3  # both ways read it, and the fallback put it back
