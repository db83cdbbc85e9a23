"""Announcements of finished jobs kept in the queue's database until they are sent (rows added by
JobQueue.finish): what a worker killed between finishing a job and announcing it sends when it
starts again, each at most once (taken, that is deleted, just before it is sent)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import delete
from sqlmodel import col, select

from daemon.queue.db import DeliveryRow, Job, OutputRow, reading, writing
from daemon.queue.jobs import JobQueue


def take(queue: JobQueue, worker: str, job_id: int, kind: str) -> bool:
    """Whether `kind` of `job_id` was still to be sent by `worker`; it is not any more."""
    with writing(queue.engine) as session:
        taken = session.execute(delete(DeliveryRow).where(col(DeliveryRow.job_id) == job_id, DeliveryRow.kind == kind,
                                                          DeliveryRow.worker == worker))
        return bool(taken.rowcount)  # type: ignore[attr-defined]


def pending(queue: JobQueue, worker: str, kinds: tuple[str, ...]) -> list[tuple[Job, Path, list[Path]]]:
    """The jobs with announcements `worker` has still to send, oldest first: (job, its file on this
    machine, the files written for it). Those of `kinds` no longer asked for are dropped."""
    with writing(queue.engine) as session:
        session.execute(delete(DeliveryRow).where(DeliveryRow.worker == worker, col(DeliveryRow.kind).not_in(kinds)))
    with reading(queue.engine) as session:
        ids = session.exec(select(DeliveryRow.job_id).where(DeliveryRow.worker == worker).distinct()).all()
        jobs = session.exec(select(Job).where(col(Job.id).in_(ids)).order_by(col(Job.id))).all()
        return [(job, queue.location(job), [Path(path) for path in session.exec(
            select(OutputRow.path).where(OutputRow.job_id == job.id).order_by(col(OutputRow.id)))]) for job in jobs]
