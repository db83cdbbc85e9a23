"""Shared helpers for the benchmarks: test recordings, whole-process measurement, a quiet machine, the two runners.

Every benchmark runs whole processes (interpreter start and model load included) and measures its
baseline in the same run, because the machines they run on are small and shared.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/x.py` puts bench/ on sys.path, not the repo root
    sys.path.insert(0, str(REPO))

from tests import daemon_proc, speech  # noqa: E402  (needs the sys.path line above)

srt_text = daemon_proc.srt_text  # for the benchmarks: one SRT reader for tests and benches

BENCH = REPO / "bench"
OUT = BENCH / "out"
AUDIO_DIR = OUT / "audio"
CACHE_DIR = OUT / "cache"  # WHISPER_DAEMON_CACHE_DIR: shared so a model is converted only once
MODEL_CACHE = CACHE_DIR / "models"  # where the worker looks: cfg.cache_dir / "models"
PEAK = BENCH / "_peak.py"
PEER = BENCH / "_peer.py"  # faster-whisper, whisper.cpp or openai-whisper transcribe() as a process
PYTHON = sys.executable  # run benchmarks with .venv/bin/python; children use the same interpreter
WHISPER_CLI = Path(sys.executable).parent / "whisper"

SAMPLE_SECONDS = 0.05  # RSS sampling period
REFRESH_SECONDS = 0.5  # how often the list of descendants is rebuilt (see measure())
MB = 1024 * 1024
BUSY_SHARE = 0.10  # other processes using more than this share of all cores: the machine is not quiet


# --------------------------------------------------------------------------- recordings


def _speech_fingerprint() -> str:
    # Part of the cache name: regenerated fixtures or a changed composer must not reuse old audio.
    digest = hashlib.sha256((speech.SPEECH_DIR / "manifest.json").read_bytes())
    digest.update(Path(speech.__file__).read_bytes())
    return digest.hexdigest()[:8]


def recording(minutes: float, seed: int, fmt: str = ".m4a") -> tuple[Path, str]:
    """A `meeting()` of `minutes` written as `fmt` under bench/out/audio; cached by name."""
    name = f"meeting-{minutes:g}min-seed{seed}-{_speech_fingerprint()}"
    path, text_path = AUDIO_DIR / f"{name}{fmt}", AUDIO_DIR / f"{name}.txt"
    if path.is_file() and text_path.is_file():
        return path, text_path.read_text(encoding="utf-8")
    AUDIO_DIR.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rec = speech.meeting(minutes * 60, seed)
    text_path.write_text(rec.text, encoding="utf-8")
    # Written under a temporary name (same extension: it picks the codec) and renamed, so an
    # interrupted hour-long encode is never mistaken for a finished one.
    partial = path.with_name(f".{name}.partial{fmt}")
    rec.write(partial)
    os.replace(partial, path)
    print(f"  wrote {path.relative_to(REPO)} ({rec.seconds:.0f} s of audio) in "
          f"{time.monotonic() - started:.0f} s", file=sys.stderr)
    return path, rec.text


def silence(hours: float, dbfs: float | None) -> Path:
    """`hours` of digital silence (dbfs None) or of white-noise room tone at `dbfs` RMS
    (tests.speech.write_silence) as FLAC under bench/out/audio; cached by name."""
    path = AUDIO_DIR / f"silence-{hours:g}h-{'zeros' if dbfs is None else f'{dbfs:g}dBFS'}.flac"
    if not path.is_file():
        AUDIO_DIR.mkdir(parents=True, exist_ok=True)
        speech.write_silence(path.with_suffix(".partial.flac"), hours * 3600, dbfs).rename(path)
    return path


def audio_seconds(path: Path) -> float:
    """Duration from the container (cheap: no decoding)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        return (container.duration or 0) / 1_000_000  # av.time_base units


# --------------------------------------------------------------------------- measuring


@dataclass
class Measurement:
    wall_seconds: float
    peak_rss_mb: float  # max(sampled_rss_mb, ru_maxrss_mb): see measure()
    returncode: int
    stdout: str
    stderr: str
    sampled_rss_mb: float = 0.0  # psutil: peak of the summed RSS of the whole tree, every 50 ms
    ru_maxrss_mb: float = 0.0  # kernel: peak RSS of the largest single process in the tree
    cpu_seconds: float = 0.0  # user + system over the tree: less sensitive to a busy machine than wall

    def summary(self) -> dict[str, Any]:
        """The figures without the (possibly long) output, for JSON results."""
        data = dataclasses.asdict(self)
        del data["stdout"], data["stderr"]
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in data.items()}


def measure(cmd: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Measurement:
    """Run `cmd` to completion; wall time, CPU time and peak RSS of its whole process tree.

    Two RSS figures, because each misses something:
    - psutil sampling sums RSS over every process of the tree (the whisper CLI runs ffmpeg next
      to Python), but can miss a spike shorter than the 50 ms period;
    - ru_maxrss (from the bench/_peak.py wrapper) is the kernel's exact high-water mark, but only
      of the largest single process, never a sum.
    peak_rss_mb is the larger of the two, so neither blind spot can make a run look smaller than it
    was. For a single-process run (our worker) they agree closely and ru_maxrss usually wins.
    The wrapper itself (a bare Python, ~10 MB) is in neither figure.
    """
    with tempfile.TemporaryDirectory(prefix="bench-measure-") as tmp:
        report = Path(tmp) / "peak.json"
        out_path, err_path = Path(tmp) / "stdout", Path(tmp) / "stderr"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            # Output goes to files, not pipes: nobody reads pipes while we sample, and a chatty
            # child would block on a full pipe.
            wrapper = psutil.Popen([PYTHON, str(PEAK), str(report), "--", *cmd], stdout=out, stderr=err,
                                   env=dict(env) if env is not None else None, cwd=cwd)
            started = time.perf_counter()
            sampled = _sample_tree_rss(wrapper)
            outer_wall = time.perf_counter() - started
        stdout = out_path.read_text(encoding="utf-8", errors="replace")
        stderr = err_path.read_text(encoding="utf-8", errors="replace")
        try:
            figures = json.loads(report.read_text())
        except (OSError, ValueError):  # the wrapper itself failed (bad interpreter, killed)
            figures = {"returncode": wrapper.returncode, "wall_seconds": outer_wall,
                       "ru_maxrss_bytes": 0, "cpu_seconds": 0.0}
    ru_mb = figures["ru_maxrss_bytes"] / MB
    return Measurement(wall_seconds=figures["wall_seconds"],  # the wrapper's: excludes its own start-up
                       peak_rss_mb=max(sampled / MB, ru_mb), returncode=figures["returncode"],
                       stdout=stdout, stderr=stderr, sampled_rss_mb=sampled / MB, ru_maxrss_mb=ru_mb,
                       cpu_seconds=figures["cpu_seconds"])


def _sample_tree_rss(wrapper: psutil.Popen) -> int:
    """Poll until the wrapper exits; return the peak of the summed RSS of its descendants (bytes).

    children(recursive=True) scans all of /proc, which costs a few ms: on a 2-core machine doing it
    20 times a second would slow down what we measure. So the list of processes is rebuilt every
    REFRESH_SECONDS and only their RSS (one small read each) is sampled every SAMPLE_SECONDS.
    """
    peak = 0
    procs: list[psutil.Process] = []
    refreshed = 0.0
    try:
        while True:
            now = time.monotonic()
            if now - refreshed >= REFRESH_SECONDS or not procs:
                try:
                    procs = wrapper.children(recursive=True)
                except psutil.Error:
                    procs = []
                refreshed = now
            total = 0
            for proc in procs:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:  # exited between refreshes
                    pass
            peak = max(peak, total)
            try:
                wrapper.wait(timeout=SAMPLE_SECONDS)
                return peak
            except psutil.TimeoutExpired:
                continue
    except BaseException:  # Ctrl-C or an error here: do not leave a model-sized process behind
        for proc in [*procs, wrapper]:
            try:
                proc.kill()
            except psutil.Error:
                pass
        raise


# --------------------------------------------------------------------------- a quiet machine


def _busy_seconds() -> float:
    """CPU seconds the whole machine has spent not idle (all cores, all processes)."""
    c = psutil.cpu_times()
    return sum(c) - c.idle - getattr(c, "iowait", 0.0)


def _own_seconds() -> float:
    """CPU seconds of this process and every child it has waited for (the measured engines included)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def wait_until_quiet(limit_s: float) -> float:
    """Wait (up to `limit_s`) until other processes use less than BUSY_SHARE of the cores; return that share.

    Engines on 2 threads are very sensitive to a neighbour: a torch process next to a 2-thread
    torch run made the CLI four times slower (its threads wait for each other), while whisper.cpp and
    CTranslate2 lost far less. So a busy machine would distort the ratios, not only the times.
    """
    deadline = time.monotonic() + limit_s
    while True:
        share = psutil.cpu_percent(interval=1.0) / 100
        if share < BUSY_SHARE or time.monotonic() >= deadline:
            return share
        time.sleep(2.0)


class ForeignLoad:
    """Share of all cores used by processes other than ours over a `with` block.

    The machine's busy CPU time minus our own (this process and its waited-for children): exact
    as long as no child of ours is still running at the start or the end of the block.
    """

    def __enter__(self) -> "ForeignLoad":
        self.wall, self.busy, self.own = time.monotonic(), _busy_seconds(), _own_seconds()
        self.share = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self.wall
        foreign = (_busy_seconds() - self.busy) - (_own_seconds() - self.own)
        self.share = max(0.0, foreign) / (wall * (os.cpu_count() or 1)) if wall > 0 else 0.0


# --------------------------------------------------------------------------- our daemon


def daemon_env(tmp: Path, model: str, language: str | None = None) -> dict[str, str]:
    """Environment for `python -m daemon …` with every setting inside `tmp` (model cache shared)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHISPER_DAEMON_")}
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "config.toml"
    config.touch()  # an empty config file: a user's ~/.config/whisper-daemon/config.toml must not leak in
    for folder in ("inbox", "outbox", "log"):
        (tmp / folder).mkdir(parents=True, exist_ok=True)
    env.update({
        "WHISPER_DAEMON_CONFIG": str(config),
        "WHISPER_DAEMON_INBOX": str(tmp / "inbox"),
        "WHISPER_DAEMON_OUTBOX": str(tmp / "outbox"),
        "WHISPER_DAEMON_DB": str(tmp / "jobs.db"),
        "WHISPER_DAEMON_LOG_DIR": str(tmp / "log"),
        "WHISPER_DAEMON_CACHE_DIR": str(CACHE_DIR),
        "WHISPER_DAEMON_MODEL": model,
    })
    if language:
        env["WHISPER_DAEMON_LANGUAGE"] = language
    return env


@dataclass
class DaemonRun:
    measurement: Measurement  # of the `work --exit-when-empty` process only
    srt_path: Path
    job: dict[str, Any]  # the job as `status --json` shows it (status, audio_seconds, rtf, error…)
    precision: str  # the weights' format the worker ran with (`auto` measures it at start-up)


def enqueue(audio: Path, env: Mapping[str, str]) -> None:
    """`python -m daemon enqueue AUDIO` into the queue `env` names (it hashes the file first)."""
    subprocess.run([PYTHON, "-m", "daemon", "enqueue", str(audio)], env=env, cwd=REPO, check=True,
                   capture_output=True, text=True)


def daemon_transcribe(audio: Path, model: str, tmp: Path, language: str | None = None) -> DaemonRun:
    """Enqueue `audio` in a fresh queue under `tmp`, then drain it with one measured worker process."""
    return daemon_transcribe_all([audio], model, tmp, language)[0]


def daemon_transcribe_all(audios: Sequence[Path], model: str, tmp: Path, language: str | None = None,
                          settings: Mapping[str, str] | None = None) -> list[DaemonRun]:
    """Enqueue `audios` in a fresh queue under `tmp` and drain it with one measured worker process
    (the model loaded once); one DaemonRun per file, in order, sharing that measurement.
    `settings`: more WHISPER_DAEMON_* variables (e.g. {"WHISPER_DAEMON_BEAM_SIZE": "5"})."""
    env = {**daemon_env(tmp, model, language), **(settings or {})}
    for audio in audios:
        enqueue(audio, env)  # not part of the measurement: only the worker is
    m = measure([PYTHON, "-m", "daemon", "work", "--exit-when-empty"], env=env, cwd=REPO)
    status = subprocess.run([PYTHON, "-m", "daemon", "status", "--json", "--limit", str(len(audios))], env=env,
                            cwd=REPO, check=True, capture_output=True, text=True)
    jobs = {Path(job["path"]).resolve(): job for job in json.loads(status.stdout)["jobs"]}
    log = tmp / "log" / "worker.log"
    # the format `auto` chose is in the worker's start-up line (its row is gone once it exits)
    precision = ",".join(sorted(set(re.findall(r"worker ready \(.*?\): .* on \S+, (\S+) weights",
                                               log.read_text(encoding="utf-8", errors="replace")
                                               if log.is_file() else ""))))
    if m.returncode != 0 or len(jobs) != len(audios) or any(job["status"] != "done" for job in jobs.values()):
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:] if log.is_file() else m.stderr[-3000:]
        raise RuntimeError(f"worker exited {m.returncode}; jobs: {list(jobs.values())}\n{tail}")
    return [DaemonRun(m, _srt(jobs[a.resolve()]), jobs[a.resolve()], precision) for a in audios]


def _srt(job: dict[str, Any]) -> Path:
    """The SRT among a job's files, as `status --json` lists them."""
    return next(Path(path) for path in job["outputs"] if path.endswith(".srt"))


# --------------------------------------------------------------------------- openai-whisper


def converted_checkpoint(model: str) -> Path:
    """The openai-whisper .pt the worker itself would load for `model` (converting it once if needed).

    Resolved through the daemon's own code and cache folder, so both sides load the same weights.
    """
    from daemon.engine.weights import resolve_model  # imports torch: only when needed

    return resolve_model(model, MODEL_CACHE).checkpoint


def warm_file_cache(path: Path) -> None:
    """Read a file once so the first measured run does not pay the disk read the second one skips."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def checked(m: Measurement, output: Path, what: str) -> tuple[Measurement, Path]:
    """A run counts only if it exited 0 and wrote its output (some tools exit 0 after a failure)."""
    if m.returncode != 0 or not output.is_file():
        raise RuntimeError(f"{what} exited {m.returncode}, no {output.name}:\n{m.stderr[-3000:]}")
    return m, output


def whisper_cli(audio: Path, checkpoint: Path, outdir: Path) -> tuple[Measurement, Path]:
    """openai-whisper's own CLI at its defaults (beam 5, best_of 5, temperature fallback), CPU fp32, English."""
    m, (srt_path,) = whisper_cli_all([audio], checkpoint, outdir, language="en")
    return m, srt_path


def whisper_cli_all(audios: Sequence[Path], checkpoint: Path, outdir: Path,
                    language: str | None) -> tuple[Measurement, list[Path]]:
    """The CLI as in whisper_cli(), on several files in one process (the model loaded once);
    language None: detected per file, as the CLI does by default. The SRT paths follow `audios`."""
    cmd = [str(WHISPER_CLI), *map(str, audios), "--model", str(checkpoint), "--model_dir", str(checkpoint.parent),
           "--output_dir", str(outdir), "--output_format", "srt", "--fp16", "False", "--verbose", "False"]
    if language:
        cmd += ["--language", language]
    m = measure(cmd, cwd=REPO)
    # whisper's writer: output_dir / <input name without extension>.srt; it prints "Skipping …" and
    # exits 0 when a file fails.
    srt_paths = [checked(m, outdir / f"{audio.stem}.srt", "whisper CLI")[1] for audio in audios]
    return m, srt_paths


# --------------------------------------------------------------------------- scoring and reporting


def wer(reference: str, hypothesis: str) -> float:
    """tests.speech.wer: word error rate after whisper's English normaliser (0.05 = 5 %)."""
    return speech.wer(reference, hypothesis)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table; first column left-aligned, the rest right-aligned."""
    cells = [[str(c) for c in header], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def cpu_model() -> str:
    """lscpu's model name: speed figures hold for one CPU family, so every result names its CPU."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        if match := re.search(r"^Model name:\s*(.+)$", out, re.MULTILINE):
            return match.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Context for a result file: figures from different machines or loads are not comparable."""
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=False).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "daemon"], cwd=REPO, capture_output=True,
                                    text=True, check=False).stdout.strip())
    except OSError:
        commit, dirty = "", False
    return {
        "cpu_model": cpu_model(), "platform": platform.platform(), "machine": platform.machine(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "git_commit": commit, "daemon_dirty": dirty,
    }


def write_result(name: str, data: dict[str, Any]) -> Path:
    path = OUT / f"{name}.json"
    OUT.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **data}
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def mb(value: float) -> str:
    return f"{value:.0f}"


def pct(value: float) -> str:
    return f"{value * 100:.2f}%"
