"""Several workers on one PostgreSQL queue (issue 14), against a real server (tests/pg.py).

1. Throughput on one machine: one worker with 2 torch threads against two workers with 1 each,
   draining the same recordings from a PostgreSQL queue. Paired runs (ABBA over --repeat), ratio of
   wall times in each pair.
2. Claim latency with 20 idle workers: from a job's commit to its claim, jobs queued one at a time.
   The claimers run the worker's idle loop (worker.Worker.run: Waiter, claim, the same back-off
   constants) without a model, 20 processes; woken by LISTEN/NOTIFY against the same loop with
   notifications off (SQLite's polling, capped at IDLE_MAX_SECONDS), in the same run. Also the
   transactions the idle claimers cost the server per second.

    .venv/bin/python bench/shared_queue.py [--files 6] [--minutes 1] [--repeat 2] [--claimers 20] [--jobs 30]
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import common

from tests.daemon_proc import srt_text
from tests.pg import Server, rows, settled

MODEL = "tiny.en"


# --------------------------------------------------------------------------- 1. throughput


def drain(server: Server, audios: list[Path], tmp: Path, workers: int, threads: int) -> dict[str, Any]:
    """Queue `audios` in a new database, then drain it with `workers` worker processes of `threads` each."""
    url = server.new_database()
    env = {**common.daemon_env(tmp, MODEL), "WHISPER_DAEMON_DB": url, "WHISPER_DAEMON_THREADS": str(threads)}
    for audio in audios:
        common.enqueue(audio, env)
    began = time.monotonic()
    procs = [subprocess.Popen([common.PYTHON, "-m", "daemon", "work", "--exit-when-empty"], cwd=common.REPO,
                              env={**env, "WHISPER_DAEMON_LOG_DIR": str(tmp / f"log{n}")},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for n in range(workers)]
    codes = [proc.wait(timeout=3600) for proc in procs]
    wall = time.monotonic() - began
    jobs = settled(url, len(audios))
    if codes != [0] * workers or not jobs or any(j["status"] != "done" for j in jobs):
        raise RuntimeError(f"workers exited {codes}; jobs {jobs}")
    first = min(j["started_at"] for j in jobs)
    last = max(j["finished_at"] for j in jobs)
    audio = sum(j["audio_seconds"] for j in jobs)
    words = {Path(j["path"]).name: srt_text(Path(o["path"])) for j in jobs
             for o in rows(url, "SELECT path FROM outputs WHERE job_id = %s AND format = 'srt'", (j["id"],))}
    return {"workers": workers, "threads": threads, "wall_seconds": round(wall, 2),
            "after_load_seconds": round((last - first).total_seconds(), 2), "audio_seconds": round(audio, 1),
            "x_real_time": round(audio / wall, 2), "transcripts": words}


def throughput(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    recordings = [common.recording(args.minutes, seed=400 + i) for i in range(args.files)]
    audios = [path for path, _ in recordings]
    texts = {path.name: text for path, text in recordings}
    one, two = (1, 2), (2, 1)  # (workers, threads each)
    pairs = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeat):
            order = [one, two] if repeat % 2 == 0 else [two, one]
            runs = {shape: drain(server, audios, Path(tmp) / f"r{repeat}-{shape[0]}", *shape) for shape in order}
            for run in runs.values():
                run["wer"] = round(statistics.mean(common.wer(texts[name], words)
                                                   for name, words in run.pop("transcripts").items()), 4)
            pairs.append({"order": [f"{w}x{t}" for w, t in order], "one_worker": runs[one], "two_workers": runs[two],
                          "ratio_two_over_one": round(runs[two]["wall_seconds"] / runs[one]["wall_seconds"], 3)})
            print(f"  pair {repeat + 1}: 1 worker x 2 threads {runs[one]['wall_seconds']:.1f} s, 2 workers x 1 thread "
                  f"{runs[two]['wall_seconds']:.1f} s (ratio {pairs[-1]['ratio_two_over_one']:.3f})", file=sys.stderr)
    return {"files": args.files, "minutes_each": args.minutes, "pairs": pairs,
            "median_ratio_two_over_one": statistics.median(p["ratio_two_over_one"] for p in pairs)}


# --------------------------------------------------------------------------- 2. claim latency


def _claimer(url: str, name: str, notify: bool, waits: tuple[float, float], folder: str) -> None:
    """worker.Worker.run's idle loop around a claim, without a model (nor torch: daemon.processes.worker's
    constants come as `waits`, (IDLE_MIN_SECONDS, idle max)): a claimed job is finished at once."""
    from daemon.queue.db import JobStatus, Waiter, connect
    from daemon.queue.jobs import JobQueue

    engine = connect(url)
    queue, stop = JobQueue(engine), threading.Event()
    waiter = Waiter(engine) if notify else None  # None: SQLite's wait, the stop event's timeout
    idle_min, idle_max = waits
    delay = idle_min
    if waiter is not None:
        waiter.wait(stop, 0.01)  # LISTEN now, before it says it is ready
    (Path(folder) / f"ready-{name}").touch()
    while not (Path(folder) / "stop").exists():
        job = queue.claim(name)
        if job is not None:
            queue.finish(job.id, name, JobStatus.DONE)
            delay = idle_min
            continue
        woke = waiter.wait(stop, delay) if waiter is not None else stop.wait(delay)
        delay = idle_min if woke else min(delay * 2, idle_max)
    if waiter is not None:
        waiter.close()


def _transactions(url: str) -> int:
    (row,) = rows(url, "SELECT xact_commit + xact_rollback AS n FROM pg_stat_database WHERE datname = current_database()")
    return int(row["n"])


def claim_latency(server: Server, claimers: int, jobs: int, notify: bool, tmp: Path, seed: int) -> dict[str, Any]:
    from daemon.processes.worker import HEARTBEAT_SECONDS, IDLE_MAX_SECONDS, IDLE_MIN_SECONDS
    from daemon.queue.db import connect
    from daemon.queue.jobs import JobQueue

    url = server.new_database()
    queue = JobQueue(connect(url))
    folder = tmp / f"claimers-{notify}"
    folder.mkdir()
    waits = (IDLE_MIN_SECONDS, HEARTBEAT_SECONDS if notify else IDLE_MAX_SECONDS)  # as Worker.idle_max
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_claimer, args=(url, f"c{n}", notify, waits, str(folder))) for n in range(claimers)]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + 300
    while len(list(folder.glob("ready-*"))) < claimers:
        if time.monotonic() > deadline:
            raise RuntimeError("the claimers did not start")
        time.sleep(0.2)
    time.sleep(2 * waits[1])  # inherent: every claimer backs off to its longest idle wait
    idle_began, idle_tx = time.monotonic(), _transactions(url)
    time.sleep(3 * waits[1])  # inherent: the idle cost is measured over a quiet stretch
    idle_rate = (_transactions(url) - idle_tx) / (time.monotonic() - idle_began)
    rng = random.Random(seed)
    for n in range(jobs):
        path = tmp / f"job-{notify}-{n}.wav"
        path.write_bytes(f"job {n} {notify}".encode())
        queue.enqueue(path)
        time.sleep(rng.uniform(1.0, 3.0))  # inherent: jobs arrive one at a time, workers idle in between
    deadline = time.monotonic() + 120
    while (done := settled(url, jobs)) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    (folder / "stop").touch()
    for proc in procs:
        proc.join(timeout=60)
    if done is None:
        raise RuntimeError("the claimers did not take every job")
    latencies = sorted((j["started_at"] - j["created_at"]).total_seconds() for j in done)
    return {"notify": notify, "claimers": claimers, "jobs": jobs,
            "p50_ms": round(1000 * statistics.median(latencies), 1),
            "p95_ms": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1),
            "max_ms": round(1000 * latencies[-1], 1),
            "idle_transactions_per_second": round(idle_rate, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--claimers", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    machine = common.machine()
    common.converted_checkpoint(MODEL)
    with tempfile.TemporaryDirectory() as tmp:
        server = Server.start(Path(tmp) / "pgdata")
        try:
            result: dict[str, Any] = {"machine": machine}
            if not args.skip_throughput:
                result["throughput"] = throughput(server, args)
            latency = [claim_latency(server, args.claimers, args.jobs, notify, Path(tmp), seed=7)
                       for notify in (True, False)]
            result["claim_latency"] = latency
        finally:
            server.stop()
    path = common.write_result("shared_queue", result)
    print(f"CPU: {machine['cpu_model']}")
    if "throughput" in result:
        t = result["throughput"]
        print(common.table(["pair", "order", "1 worker x 2 threads (s)", "2 workers x 1 thread (s)", "x real time (1 / 2)",
                            "2 / 1", "WER (1 / 2)"],
                           [[i + 1, " then ".join(p["order"]), p["one_worker"]["wall_seconds"],
                             p["two_workers"]["wall_seconds"],
                             f"{p['one_worker']['x_real_time']} / {p['two_workers']['x_real_time']}",
                             p["ratio_two_over_one"], f"{p['one_worker']['wer']:.2%} / {p['two_workers']['wer']:.2%}"]
                            for i, p in enumerate(t["pairs"])]))
        print(f"median ratio (2 workers x 1 thread) / (1 worker x 2 threads): {t['median_ratio_two_over_one']:.3f} "
              f"({t['files']} files of {t['minutes_each']:g} min, {MODEL})")
    print(common.table(["wake-up", "claimers", "jobs", "p50 ms", "p95 ms", "max ms", "idle tx/s"],
                       [["LISTEN/NOTIFY" if r["notify"] else "polling (2 s cap)", r["claimers"], r["jobs"], r["p50_ms"],
                         r["p95_ms"], r["max_ms"], r["idle_transactions_per_second"]] for r in result["claim_latency"]]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
