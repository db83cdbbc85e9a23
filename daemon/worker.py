"""The worker: one resident model, one job at a time, claimed from the queue.

Shaped like huey's consumer: `initialize()` once, `run_once()` per job, `shutdown()` at the end.
Between windows it commits a checkpoint, then lets the guard pause or back off.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import psutil
from loguru import logger
from whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE  # in the worker only: importing whisper loads torch

from daemon import precision
from daemon.audio import AudioError, probe_seconds
from daemon.config import Config, ConfigError
from daemon.db import Job, JobStatus, WorkerState, checkpoint, connect, storage_error
from daemon.engine import DecodeSettings, Engine
from daemon.guards import (
    BACKOFF_MAX_SECONDS, BACKOFF_START_SECONDS, MB, Guard, Memory, Status, model_fits, release_memory, rss_mb,
)
from daemon.queue import JobQueue
from daemon.registry import Registry
from daemon.subtitles import render, write_atomic
from daemon.weights import ModelError, ResolvedModel, load_resolved, resolve_model, smaller_models

IDLE_MIN_SECONDS = 0.2
IDLE_MAX_SECONDS = 2.0  # worst-case pickup delay for a new job while idle
HEARTBEAT_SECONDS = 10.0  # while idle; busy workers beat once per window
STORAGE_BACKOFF_START_SECONDS = 2.0  # disk full or I/O error: first wait before trying the job again
STORAGE_BACKOFF_MAX_SECONDS = 300.0


class Worker:
    def __init__(self, cfg: Config, stop: threading.Event | None = None) -> None:
        self.cfg = cfg
        self.stop = stop or threading.Event()
        engine = connect(cfg.db)
        self.queue = JobQueue(engine, cfg.outbox)
        self.registry = Registry(engine)
        # Tests replace the guard with one whose probes and clock are injected.
        self.guard = Guard(self.report, self.stop.wait, low_memory_mb=cfg.min_available_mb)
        self.engine: Engine | None = None
        self.model_name = cfg.model
        self.precision = cfg.precision
        self.current_job: int | None = None
        self.recycle = False  # set when RSS outgrew its cap: exit so the service manager restarts us
        self._last_beat = 0.0
        self._storage_backoff = STORAGE_BACKOFF_START_SECONDS

    def initialize(self) -> None:
        for row in self.registry.prune():
            logger.warning("worker {} on this host is gone (last heartbeat {}); forgetting it",
                           row.pid, row.heartbeat_at.isoformat(timespec="seconds"))
        for job in self.queue.recover(self.cfg.max_attempts, held=self.registry.busy_job_ids()):
            logger.warning("recovered job {} ({}) left running by a previous worker: now {}",
                           job.id, Path(job.path).name, job.status.value)
        language = _language_code(self.cfg.language)
        resolved = resolve_model(self.cfg.model, self.cfg.cache_dir / "models")
        if not self._wait_until_model_fits(resolved):
            return  # asked to stop while waiting: run() returns at once
        threads = precision.use_physical_cores()
        model, device = precision.to_device(load_resolved(resolved), precision.pick_device())
        if language not in (None, "en") and not model.is_multilingual:
            multilingual = resolved.name.removesuffix(".en") if resolved.name.endswith(".en") else "base"
            raise ConfigError(f"language {self.cfg.language!r}: model {resolved.name} is English-only. Choose a "
                              f"multilingual model (e.g. --model {multilingual}), or leave the language unset.")
        self.precision = precision.choose(self.cfg.precision, device)
        model = precision.convert(model, self.precision)
        self.model_name = resolved.name
        self.engine = Engine(model, DecodeSettings(language=language, beam_size=self.cfg.beam_size,
                                                   chunk_seconds=self.cfg.chunk_seconds))
        self.registry.register(resolved.name, self.precision)
        self.report(Status(WorkerState.IDLE))
        logger.info("worker ready: model {} from {} on {}, {} weights ({:.0f} MB), {} torch threads "
                    "(physical cores)", resolved.name, resolved.source, device, self.precision,
                    precision.weight_bytes(model) / MB, threads)

    def _wait_until_model_fits(self, resolved: ResolvedModel) -> bool:
        """Whether the model fits in free memory, waiting (paused, shown in `status`) until it does;
        False if asked to stop meanwhile. A model that even this machine's total memory cannot hold
        is a configuration error: waiting would never end."""
        size, reserve = resolved.checkpoint.stat().st_size, self.cfg.min_available_mb
        total = Memory(psutil.virtual_memory().total / MB)
        if not model_fits(size, total, reserve):
            smaller = smaller_models(resolved.name)
            choice = (f"Choose a smaller model (--model {smaller[0]}; smaller ones: {', '.join(smaller)})"
                      if smaller else "No smaller model exists: use a machine with more memory")
            raise ModelError(f"model {resolved.name} can never fit: this machine has {total.available_mb:.0f} MB of "
                             f"memory in all, and min_available_mb keeps {reserve:.0f} MB of it free. {choice}, "
                             "or lower min_available_mb.")
        delay, registered = BACKOFF_START_SECONDS, False
        while not model_fits(size, memory := self.guard.memory(), reserve):
            reason = (f"waiting for memory to load model {resolved.name}: only {memory.available_mb:.0f} MB "
                      f"available, {reserve:.0f} MB of which stay free (min_available_mb)")
            logger.warning("{}; checking again in {:.0f} s", reason, delay)
            if not registered:  # so that `status` shows the wait
                self.registry.register(resolved.name, self.cfg.precision)
                registered = True
            self.report(Status(WorkerState.PAUSED, reason))
            if self.guard.wait(delay):
                return False
            delay = min(delay * 2, BACKOFF_MAX_SECONDS)
        if registered:
            logger.info("model {} fits in memory now: loading it", resolved.name)
        return True

    def run(self, exit_when_empty: bool = False) -> None:
        """Work until stopped; idle waits back off from IDLE_MIN to IDLE_MAX and reset on work."""
        delay = IDLE_MIN_SECONDS
        while not self.stop.is_set():
            if self.run_once():
                delay = IDLE_MIN_SECONDS
                continue
            if exit_when_empty:
                break
            if time.monotonic() - self._last_beat >= HEARTBEAT_SECONDS:
                self.report(Status(WorkerState.IDLE))
            self.stop.wait(delay)
            delay = min(delay * 2, IDLE_MAX_SECONDS)

    def run_once(self) -> bool:
        """Claim and process one job; False when the queue had nothing to claim (or we must stop)."""
        if not self.guard.check():  # don't start a job under memory pressure
            return False
        try:
            job = self.queue.claim()
        except Exception as e:
            if not storage_error(e):
                raise
            self._pause_for_storage(None, e)
            return True
        if job is None:
            return False
        assert job.id is not None
        self.current_job = job.id
        self.report(Status(WorkerState.BUSY))
        try:
            twin = self.queue.finished_twin(job)
            if twin is not None and Path(twin.srt_path).is_file():
                self._copy_twin(job, twin)
            else:
                self._transcribe(job)
            self._storage_backoff = STORAGE_BACKOFF_START_SECONDS
        except Exception as e:
            if storage_error(e):  # disk full, I/O error: not the file's fault
                self._pause_for_storage(job.id, e)
            else:  # one bad job must not take the worker down
                logger.exception("job {}: unexpected error", job.id)
                self.queue.fail(job.id, f"{Path(job.path).name}: unexpected error ({type(e).__name__}: {e}); "
                                        "see the worker log")
        finally:
            self.current_job = None
            self.report(Status(WorkerState.IDLE))
        checkpoint(self.queue.engine)  # between jobs, so `sqlite3` readers cannot keep the WAL growing
        self._check_rss()
        return True

    def shutdown(self) -> None:
        self.registry.unregister()
        self.queue.engine.dispose()
        logger.info("worker stopped")

    def report(self, status: Status) -> None:
        self._last_beat = time.monotonic()
        try:
            self.registry.heartbeat(status.state, status.reason, rss_mb(), self.current_job)
        except Exception as e:
            if not storage_error(e):
                raise
            logger.warning("could not record the worker's state: {}", getattr(e, "orig", e))  # not worth stopping for

    def _pause_for_storage(self, job_id: int | None, error: Exception) -> None:
        """A write failed (disk full, I/O error). Wait, longer each time, then put the job back in
        the queue with its checkpoint, uncounted, to be tried again; nothing is marked failed."""
        while True:
            what = f"job {job_id} is put back and tried again" if job_id is not None else "trying again"
            # SQLAlchemy's message repeats the whole statement; the driver's says what went wrong.
            logger.warning("cannot write ({}): {} in {:.0f} s", getattr(error, "orig", error), what,
                           self._storage_backoff)
            stopping = self.stop.wait(self._storage_backoff)
            self._storage_backoff = min(self._storage_backoff * 2, STORAGE_BACKOFF_MAX_SECONDS)
            try:
                if job_id is not None:
                    self.queue.release(job_id)
                return
            except Exception as e:
                if not storage_error(e):
                    raise
                if stopping:  # left `running`: the next worker's start-up recovery requeues it
                    logger.warning("job {} could not be put back in the queue: {}", job_id, getattr(e, "orig", e))
                    return
                error = e

    def _check_rss(self) -> None:
        """Long-lived whisper processes leak; past the cap, exit between jobs for a fresh start."""
        rss = rss_mb()
        if rss > self.cfg.max_rss_mb:
            logger.warning("RSS {:.0f} MB is above the {:.0f} MB cap; exiting for a fresh restart", rss,
                           self.cfg.max_rss_mb)
            self.recycle = True
            self.stop.set()

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
        self.engine.settings = replace(self.engine.settings, batch_size=self.guard.batch_size(self.cfg.batch_size))
        began = window_began = time.monotonic()
        processed = decoded = start.offset_seconds  # resumed at the very end: no window, nothing new decoded
        try:
            for window in self.engine.windows(path, start):
                now = time.monotonic()
                window_rtf = (now - window_began) / max(window.checkpoint.offset_seconds - processed, 1e-6)
                processed, decoded = window.checkpoint.offset_seconds, window.decoded_seconds
                rtf = (now - began) / max(processed - start.offset_seconds, 1e-6)
                self.queue.save_window(job.id, window, expected, rtf)
                release_memory()
                self.report(Status(WorkerState.BUSY))
                if self.stop.is_set() or not self.guard.check(window_rtf):
                    self.queue.release(job.id)
                    logger.info("job {}: stopped at {:.1f} s; it resumes there next time", job.id, processed)
                    return
                window_began = time.monotonic()
            write_atomic(Path(job.srt_path), render(self.queue.segments(job.id)))
        except AudioError as e:
            self.queue.fail(job.id, f"{path.name}: {e}")
            logger.warning("job {} failed: {}: {}", job.id, path.name, e)
            return
        done = self.queue.finish(job.id, JobStatus.DONE, progress=1.0, audio_seconds=decoded, model=self.model_name,
                                 precision=self.precision)
        logger.info("job {}: done, {:.1f} s of audio at {:.2f}x real time → {}", job.id,
                    done.audio_seconds or 0.0, done.rtf or 0.0, job.srt_path)

    def _copy_twin(self, job: Job, twin: Job) -> None:
        """Same content as a finished job: reuse its transcript under this file's own name."""
        assert job.id is not None
        if Path(twin.srt_path) != Path(job.srt_path):
            write_atomic(Path(job.srt_path), Path(twin.srt_path).read_text(encoding="utf-8"))
        self.queue.finish(job.id, JobStatus.DUPLICATE, duplicate_of=twin.id, audio_seconds=twin.audio_seconds,
                          rtf=0.0, progress=1.0, language=twin.language, model=twin.model)
        logger.info("job {}: same content as job {}; copied its transcript to {}", job.id, twin.id, job.srt_path)


def _language_code(language: str | None) -> str | None:
    """The `language` setting as Whisper's code: a code ("de") or a name ("German", "castilian")."""
    if language is None:
        return None
    key = language.strip().lower()
    code = key if key in LANGUAGES else TO_LANGUAGE_CODE.get(key)
    if code is not None:
        return code
    raise ConfigError(f"language {language!r} is not one Whisper knows. Give a code or an English name, e.g. "
                      f"en or english, de or german (codes: {', '.join(sorted(LANGUAGES))}), or leave it unset to "
                      "detect the language of each recording.")
