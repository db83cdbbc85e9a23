"""A job's voice prints (engine/speakers), kept beside its segments: its speaker labels are made
from them, and a duplicate's from its twin's, without the audio or the model."""

from __future__ import annotations

from sqlalchemy import delete
from sqlmodel import col, select

from daemon.queue.db import VoiceRow, reading, writing
from daemon.queue.jobs import JobQueue, held
from daemon.transcript import Voice


def save(queue: JobQueue, job_id: int, holder: str, voices: list[Voice]) -> None:
    """Replace the job's prints with `voices`, in one transaction, while `holder` holds the job."""
    with writing(queue.engine) as session:
        held(session, job_id, holder)
        session.execute(delete(VoiceRow).where(col(VoiceRow.job_id) == job_id))
        session.add_all(VoiceRow(job_id=job_id, seq=i, start=v.start, end=v.end, vector=v.vector)
                        for i, v in enumerate(voices))


def of(queue: JobQueue, job_id: int) -> list[Voice]:
    with reading(queue.engine) as session:
        rows = session.exec(select(VoiceRow).where(VoiceRow.job_id == job_id).order_by(col(VoiceRow.seq)))
        return [Voice(r.start, r.end, bytes(r.vector)) for r in rows]
