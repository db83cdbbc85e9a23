"""A finished job's files: rendered in every format, named in the worker's outbox, written atomically;
then the job ended in the queue and the user told (formats/delivery.py), in the background.
"""

from __future__ import annotations

from pathlib import Path

from loguru import logger

from daemon.config import Config, cue_rules
from daemon.files.outputs import folder_for, write_atomic
from daemon.files.outputs import refusal as output_refusal
from daemon.formats import render
from daemon.formats.delivery import Delivery, Ready
from daemon.queue import deliveries
from daemon.queue.db import Job, JobStatus, storage_error
from daemon.queue.jobs import JobQueue
from daemon.transcript import Transcript

DELIVERY_CLOSE_SECONDS = 5.0  # at shutdown, announcements still pending get this long (launchd waits 20 s)


class Results:
    def __init__(self, cfg: Config, queue: JobQueue, name: str) -> None:
        """`name`: the worker's, which holds the jobs and whose announcements these are."""
        self.cfg, self.queue, self.name = cfg, queue, name
        self.delivery = Delivery(cfg.notify, cfg.on_done, cfg.webhook, backlog=self._undelivered,
                                 take=lambda job_id, kind: deliveries.take(queue, name, job_id, kind))

    def write(self, job: Job, transcript: Transcript) -> dict[str, Path]:
        """Render the transcript in every format of `formats`, choose their names in this worker's
        outbox, write each atomically; format → path."""
        assert job.id is not None
        rules = cue_rules(self.cfg)
        texts = {fmt: render(fmt, transcript, rules) for fmt in self.cfg.formats}
        folder = folder_for(self.queue.location(job), self.cfg.inbox, self.cfg.outbox)
        written = self.queue.reserve_outputs(job.id, self.name, folder, texts)
        for fmt, path in written.items():
            try:
                write_atomic(path, texts[fmt])
            except OSError as e:
                if storage_error(e):  # disk full, I/O error: wait and try again
                    raise
                raise output_refusal(e, path) from e  # the job's own: it can never be written there
        return written

    def end(self, job: Job, written: dict[str, Path], status: JobStatus, **fields: object) -> None:
        """Where every job whose files are written ends: marked done (or a duplicate), logged with the
        files' names, and announced (delivery.py: in the background, when the user asked for it)."""
        assert job.id is not None
        ended = self.queue.finish(job.id, self.name, status, deliveries=self.delivery.kinds, **fields)
        self.delivery.announce(Ready(job.id, self.queue.location(job), tuple(written.values()), ended.language,
                                     ended.duplicate_of))
        files = ", ".join(str(path) for path in written.values())
        if status == JobStatus.DUPLICATE:
            logger.info("job {}: same content as job {}; rendered its transcript to {}", job.id, ended.duplicate_of,
                        files)
        else:
            logger.info("job {}: done, {:.1f} s of audio at {:.2f}x real time → {}", job.id,
                        ended.audio_seconds or 0.0, ended.rtf or 0.0, files)

    def announce_left(self) -> None:
        """At start: what this worker's previous life finished, then died before announcing."""
        if left := self._undelivered():
            logger.info("announcing {} transcript(s) finished before the last stop", len(left))
            for ready in left:
                self.delivery.announce(ready)

    def close(self) -> None:
        self.delivery.close(DELIVERY_CLOSE_SECONDS)

    def _undelivered(self) -> list[Ready]:
        """Announcements this worker (its slot) has still to send, from the queue's database."""
        if not self.delivery.kinds:
            return []
        return [Ready(job.id, source, tuple(written), job.language, job.duplicate_of)
                for job, source, written in deliveries.pending(self.queue, self.name, self.delivery.kinds)
                if job.id is not None]
