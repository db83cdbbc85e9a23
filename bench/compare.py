"""Peers: our worker vs openai-whisper's CLI, faster-whisper and whisper.cpp, same audio, same weights.

Every engine is a whole process, timed from start to exit with the model load included, on the
same recordings and the same Whisper weights, in the same run:

- `cli`    openai-whisper's `whisper` CLI at its defaults (beam 5, best_of 5, temperature
           fallback), fp32, with the checkpoint our worker loads (common.whisper_cli_all());
- `faster` faster-whisper at its defaults (beam 5, temperature fallback), int8 on the CPU, given
           the CTranslate2 folder those weights come from (`bench/_peer.py faster`);
- `cpp`    whisper.cpp through pywhispercpp at its defaults (greedy best_of 5, temperature
           fallback) with n_threads=2, given a ggml file converted from that checkpoint by
           bench/ggml.py (`bench/_peer.py cpp`);
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
"Peers (bench/compare.py)" of docs/benchmarks.md (bench/compare_report.py); the peers' weights
and versions: bench/peers.py. Needs bench/requirements.txt.

    .venv/bin/python bench/compare.py [--minutes 5 15] [--models tiny.en base]
        [--engines cli faster cpp ours] [--repeat N] [--warm-files 10] [--warm-minutes 1]
        [--no-warm | --no-single] [--no-docs]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import common
from common import BUSY_SHARE, ForeignLoad, Measurement, mb, pct, wait_until_quiet
from compare_report import DOCS_MD, DOCS_PNG, PNG_OUT, chart, command_line, markdown, print_case, update_docs
from peers import CPP_THREADS, ENGINES, LANGUAGE, SHORT, Weights, prepare, versions

# Time targets compare paired ratios (ours / peer wall time, median over the pairs); RSS, medians.
TIME_VS_CLI = 0.33  # one file: ours ≤ 0.33 × CLI wall time
TIME_VS_FASTER = 0.8  # one file: ours ≤ 0.8 × faster-whisper wall time
TIME_VS_CPP = 0.8  # one file: ours ≤ 0.8 × whisper.cpp wall time
WARM_TIME_VS_FASTER = 0.6  # warm throughput: ours ≤ 0.6 × faster-whisper wall time of the many-file process
WER_POINTS = 1.0  # one file and warm: our WER ≤ CLI WER + 1.0 point (when the CLI ran)
RSS_VS_CLI = 1.0  # one file: our peak RSS ≤ CLI peak RSS
RSS_VS_FASTER = 1.0  # one file and warm: our peak RSS ≤ faster-whisper peak RSS


# --------------------------------------------------------------------------- one run of one engine

AFTER_LOAD = re.compile(r"^after_load_seconds=([0-9.]+)$", re.MULTILINE)  # _peer.py's last line


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
    model = {"faster": w.ct2, "cpp": w.ggml}[engine]
    # the folder and files as absolute paths: never taken for options
    cmd = [common.PYTHON, str(common.PEER), engine, str(model), str(tmp), *map(str, audios),
           "--language", LANGUAGE, *(["--threads", str(CPP_THREADS)] if engine == "cpp" else [])]
    m = common.measure(cmd, cwd=common.REPO)
    texts = [common.srt_text(common.checked(m, tmp / f"{audio.stem}.srt", SHORT[engine])[1]) for audio in audios]
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
