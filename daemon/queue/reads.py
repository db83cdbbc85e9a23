"""What the queue's readers ask: jobs by state and name, counts, a job's segments, checkpoint and output
files. `status`, the web page and the worker read through here; every read is one short transaction
that never holds SQLite's write lock.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import Engine, func
from sqlmodel import col, select
from sqlmodel.sql.expression import SelectOfScalar

from daemon.queue.db import Job, JobStatus, OutputRow, SegmentRow, reading
from daemon.transcript import Checkpoint, Segment, Word


class JobReads:
    """The read side of JobQueue, usable alone with an engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def segments(self, job_id: int) -> list[Segment]:
        with reading(self.engine) as session:
            rows = session.exec(select(SegmentRow).where(SegmentRow.job_id == job_id).order_by(col(SegmentRow.seq)))
            return [Segment(r.start, r.end, r.text, words=_words(r.words)) for r in rows]

    def outputs(self, job_id: int) -> list[Path]:
        """The files written for a job, in the order they were written."""
        return self.outputs_of([job_id]).get(job_id, [])

    def outputs_of(self, ids: Iterable[int]) -> dict[int, list[Path]]:
        """The files of each of these jobs that has any, in the order they were written: one query."""
        found: dict[int, list[Path]] = {}
        with reading(self.engine) as session:
            for job_id, path in session.exec(select(OutputRow.job_id, OutputRow.path)
                                             .where(col(OutputRow.job_id).in_(list(ids))).order_by(col(OutputRow.id))):
                found.setdefault(job_id, []).append(Path(path))
        return found

    @staticmethod
    def checkpoint_of(job: Job) -> Checkpoint:
        return Checkpoint(job.processed_seconds, tuple(json.loads(job.prompt)), job.language)

    def jobs(self, limit: int = 50, *, status: JobStatus | None = None, search: str = "", offset: int = 0) -> list[Job]:
        """The newest jobs first; `status` and `search` (in the path, any case) narrow them down."""
        with reading(self.engine) as session:
            query = _matching(select(Job), status, search).order_by(col(Job.id).desc())
            return list(session.exec(query.offset(offset).limit(limit)).all())

    def counts(self, search: str = "") -> dict[JobStatus, int]:
        """How many jobs are in each state (those `search` finds); states with none are left out."""
        with reading(self.engine) as session:
            query = _matching(select(Job.status, func.count()), None, search).group_by(col(Job.status))
            return {JobStatus(status): count for status, count in session.exec(query).all()}

    def get(self, ids: Iterable[int]) -> list[Job]:
        with reading(self.engine) as session:
            return list(session.exec(select(Job).where(col(Job.id).in_(list(ids)))).all())


def _matching(query: SelectOfScalar, status: JobStatus | None, search: str) -> SelectOfScalar:
    if status is not None:
        query = query.where(Job.status == status)
    if search:
        query = query.where(col(Job.path).icontains(search, autoescape=True))
    return query


def words_json(words: Iterable[Word]) -> str:
    """A segment's words for SegmentRow.words: times to the millisecond, probabilities to 4 places."""
    return json.dumps([[round(w.start, 3), round(w.end, 3), w.text, round(w.probability, 4)] for w in words],
                      ensure_ascii=False)


def _words(stored: str) -> tuple[Word, ...]:
    return tuple(Word(start, end, text, probability) for start, end, text, probability in json.loads(stored))
