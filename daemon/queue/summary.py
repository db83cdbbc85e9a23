"""What a person is told about a job or a worker, the same in `status` and on the web page: its
length as a clock, the time left, its language, a worker's state."""

from __future__ import annotations

import json
from datetime import datetime

from daemon.queue.db import Job, WorkerRow
from daemon.queue.registry import gone


def clock(seconds: float | None) -> str:
    """1:02:03, 2:03, or "-" when not known."""
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def eta_seconds(job: Job) -> float | None:
    """The work left, at the job's own pace so far (its real-time factor); None before it has one."""
    if not (job.rtf and job.audio_seconds):
        return None
    return max(0.0, job.audio_seconds - job.processed_seconds) * job.rtf


def language(job: Job) -> str:
    """The language transcribed (detected, or set), or the one asked for until it is known;
    "ja→en" for a translation."""
    settings = json.loads(job.settings or job.asked or "{}")
    spoken = job.language or settings.get("language") or "-"
    return f"{spoken}→en" if settings.get("task") == "translate" else spoken


def ended_early(job: Job) -> str:
    """Said after a transcript whose audio ended well before its header's duration (a cut download)."""
    if job.announced_seconds is None:
        return ""
    return (f" (the audio ended at {clock(job.audio_seconds)} of the {clock(job.announced_seconds)} its header "
            "announced: the file may be cut short)")


def worker_state(worker: WorkerRow, now: datetime) -> str:
    """idle, busy, paused or backoff as the worker last said; gone when its heartbeat stopped."""
    return "gone" if gone(worker, now) else worker.state.value
