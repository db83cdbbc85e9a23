"""bench/compare.py's report: its tables on the terminal, its section of docs/benchmarks.md, its chart."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
from common import BUSY_SHARE, mb, pct
from peers import CPP_THREADS, ENGINES, SHORT

PNG_OUT = common.OUT / "compare.png"
DOCS = common.REPO / "docs"
DOCS_MD = DOCS / "benchmarks.md"
DOCS_PNG = DOCS / "benchmarks.png"
SECTION = "## Peers (bench/compare.py)"


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
