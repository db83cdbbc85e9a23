"""The worker: one resident model, one job at a time, claimed from the queue.

Shaped like huey's consumer: `initialize()` once, `run_once()` per job, `shutdown()` at the end.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from loguru import logger

from daemon.audio import AudioError, probe_seconds
from daemon.config import Config
from daemon.db import Job, JobStatus, connect
from daemon.engine import DecodeSettings, Engine
from daemon.queue import JobQueue
from daemon.subtitles import render, write_atomic
from daemon.weights import load_model

IDLE_MIN_SECONDS = 0.2
IDLE_MAX_SECONDS = 2.0  # worst-case pickup delay for a new job while idle


class Worker:
    def __init__(self, cfg: Config, stop: threading.Event | None = None) -> None:
        self.cfg = cfg
        self.stop = stop or threading.Event()
        self.queue = JobQueue(connect(cfg.db), cfg.outbox)
        self.engine: Engine | None = None
        self.model_name = cfg.model

    def initialize(self) -> None:
        for job in self.queue.recover(self.cfg.max_attempts):
            logger.warning("recovered job {} ({}) left running by a previous worker: now {}",
                           job.id, Path(job.path).name, job.status.value)
        model, resolved = load_model(self.cfg.model, self.cfg.cache_dir / "models")
        self.model_name = resolved.name
        self.engine = Engine(model, DecodeSettings(language=self.cfg.language, beam_size=self.cfg.beam_size,
                                                   chunk_seconds=self.cfg.chunk_seconds))
        logger.info("worker ready: model {} from {}", resolved.name, resolved.source)

    def run(self, exit_when_empty: bool = False) -> None:
        """Work until stopped; idle waits back off from IDLE_MIN to IDLE_MAX and reset on work."""
        delay = IDLE_MIN_SECONDS
        while not self.stop.is_set():
            if self.run_once():
                delay = IDLE_MIN_SECONDS
                continue
            if exit_when_empty:
                break
            self.stop.wait(delay)
            delay = min(delay * 2, IDLE_MAX_SECONDS)

    def run_once(self) -> bool:
        """Claim and process one job; False when the queue had nothing to claim."""
        job = self.queue.claim()
        if job is None:
            return False
        assert job.id is not None
        try:
            twin = self.queue.finished_twin(job)
            if twin is not None and Path(twin.srt_path).is_file():
                self._copy_twin(job, twin)
            else:
                self._transcribe(job)
        except Exception as e:  # one bad job must not take the worker down
            logger.exception("job {}: unexpected error", job.id)
            self.queue.fail(job.id, f"{Path(job.path).name}: unexpected error ({type(e).__name__}: {e}); "
                                    "see the worker log")
        return True

    def shutdown(self) -> None:
        self.queue.engine.dispose()
        logger.info("worker stopped")

    def _transcribe(self, job: Job) -> None:
        """Window by window, committing each window's segments with its checkpoint."""
        assert self.engine is not None and job.id is not None
        path = Path(job.path)
        start = self.queue.checkpoint_of(job)
        if start.offset_seconds:
            logger.info("job {}: resuming {} at {:.1f} s", job.id, path.name, start.offset_seconds)
        else:
            logger.info("job {}: transcribing {}", job.id, path.name)
        expected = probe_seconds(path)
        began = time.monotonic()
        processed, decoded = start.offset_seconds, 0.0
        try:
            for window in self.engine.windows(path, start):
                processed, decoded = window.checkpoint.offset_seconds, window.decoded_seconds
                rtf = (time.monotonic() - began) / max(processed - start.offset_seconds, 1e-6)
                self.queue.save_window(job.id, window, expected, rtf)
                if self.stop.is_set():
                    self.queue.release(job.id)
                    logger.info("job {}: stopped at {:.1f} s; it resumes there next time", job.id, processed)
                    return
            write_atomic(Path(job.srt_path), render(self.queue.segments(job.id)))
        except AudioError as e:
            self.queue.fail(job.id, f"{path.name}: {e}")
            logger.warning("job {} failed: {}: {}", job.id, path.name, e)
            return
        done = self.queue.finish(job.id, JobStatus.DONE, progress=1.0, audio_seconds=decoded, model=self.model_name)
        logger.info("job {}: done, {:.1f} s of audio at {:.2f}x real time → {}", job.id,
                    done.audio_seconds or 0.0, done.rtf or 0.0, job.srt_path)

    def _copy_twin(self, job: Job, twin: Job) -> None:
        """Same content as a finished job: reuse its transcript under this file's own name."""
        assert job.id is not None
        if Path(twin.srt_path) != Path(job.srt_path):
            write_atomic(Path(job.srt_path), Path(twin.srt_path).read_text(encoding="utf-8"))
        self.queue.finish(job.id, JobStatus.DUPLICATE, duplicate_of=twin.id, audio_seconds=twin.audio_seconds,
                          rtf=0.0, language=twin.language, model=twin.model)
        logger.info("job {}: same content as job {}; copied its transcript to {}", job.id, twin.id, job.srt_path)
