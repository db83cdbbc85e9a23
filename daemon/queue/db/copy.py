"""`whisper-daemon migrate --to URL`: copy a queue into another database (SQLite to PostgreSQL, as
a team outgrows one machine), history and checkpoints included."""

from __future__ import annotations

from sqlalchemy import Engine, func, insert, select

from daemon.queue.db.schema import Job, OutputName, OutputRow, SegmentRow, VoiceRow

# Workers are not copied: their rows describe processes, which register again where they run; nor
# are announcements still to send (deliveries): they belong to the workers that finished the jobs.
TABLES = [Job.__table__, SegmentRow.__table__, VoiceRow.__table__, OutputRow.__table__,  # references first
          OutputName.__table__]
BATCH_ROWS = 1000


class CopyError(Exception):
    """The copy cannot be made; the message says why and what to do."""


def copy_queue(source: Engine, target: Engine) -> dict[str, int]:
    """Copy every job (with its checkpoint), segment, voice print and output row, ids kept, into `target`, which
    must hold no jobs yet; one transaction, so a failed copy leaves `target` as it was. Rows copied per table."""
    copied = dict.fromkeys((table.name for table in TABLES), 0)
    with source.connect() as src, target.begin() as dst:
        if dst.execute(select(func.count()).select_from(Job.__table__)).scalar():
            raise CopyError("the target queue already has jobs: copy into a new, empty database")
        for table in TABLES:
            rows = src.execution_options(yield_per=BATCH_ROWS).execute(select(table).order_by(*table.primary_key))
            for batch in rows.mappings().partitions():
                dst.execute(insert(table), [dict(row) for row in batch])
                copied[table.name] += len(batch)
        if target.dialect.name == "postgresql":
            from daemon.queue.db import postgres

            postgres.continue_ids(dst, [table.name for table in TABLES if "id" in table.c])
    return copied
