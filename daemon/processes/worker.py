"""A worker: one job at a time, claimed from the queue, on a model resident in its process.

Shaped like huey's consumer: `initialize()` once, `run_once()` per job, `shutdown()` at the end.
Between windows it commits a checkpoint, then lets the guard pause or back off. A process may run
several, one per thread, on one copy of the model (processes/crew.py): each is a worker of its
own to the queue, with its own name, leases and checkpoints.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import psutil
from loguru import logger
from whisper.model import Whisper  # in the worker only: importing whisper loads torch
from whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE

from daemon import logs
from daemon.config import Config, ConfigError, speaker_bounds
from daemon.engine import precision
from daemon.engine.audio import SAMPLE_RATE, AudioError, probe_seconds
from daemon.engine.cores import Cores
from daemon.engine.remembered import Remembered
from daemon.engine.transcribe import DecodeSettings, Engine
from daemon.engine.weights import ModelError, ResolvedModel, load_resolved, resolve_model, smaller_models
from daemon.files.folders import SETTINGS_FILE, SettingsError, settings_for
from daemon.files.inputs import Fingerprint, fingerprint, refusal
from daemon.files.outputs import OutputError
from daemon.processes.guards import (
    BACKOFF_MAX_SECONDS,
    BACKOFF_START_SECONDS,
    MB,
    Guard,
    Memory,
    Status,
    model_fits,
    release_memory,
    rss_mb,
)
from daemon.processes.heartbeat import Heartbeat
from daemon.processes.results import Results
from daemon.processes.speakers import Speakers
from daemon.queue.db import Job, JobStatus, Waiter, WorkerState, checkpoint, connect, describe, slots_dir, storage_error
from daemon.queue.jobs import JobQueue, LeaseLost
from daemon.queue.registry import Registry, take_slot
from daemon.transcript import Transcript

IDLE_MIN_SECONDS = 0.2
IDLE_MAX_SECONDS = 2.0  # worst-case pickup delay for a new job while idle
# The heartbeat thread's beat (and at least BEATS_PER_LEASE per lease), which also renews the lease
# of the job in hand. On PostgreSQL, where a new job wakes idle workers (NOTIFY), they read the
# queue this often too, in case a notification was lost with a connection.
HEARTBEAT_SECONDS = 10.0
BEATS_PER_LEASE = 4  # three beats may fail (a database busy or restarting) before the lease runs out
RECOVER_SECONDS = 60.0  # how often an idle worker looks for jobs whose worker died (lease expired)
RECOVER_PER_LEASE = 2  # and at least this often per lease: a short lease is for a quick takeover
PACE_MIN_SHARE = 0.8  # windows with less audio than this share of a window don't teach the throttle guard
# Disk full or I/O error: the worker's first wait before it goes on (the job itself waits its own
# time, behind the others: JobQueue.defer), doubling while the trouble lasts.
STORAGE_BACKOFF_START_SECONDS = 2.0
STORAGE_BACKOFF_MAX_SECONDS = 300.0
# The audio ended this much before its header said (a download that stopped): shown, not silent.
# Headers of VBR MP3s without a table of contents only estimate, within about this.
SHORT_AUDIO_MIN_SECONDS = 1.0
SHORT_AUDIO_SHARE = 0.02


@dataclass(frozen=True)
class Resident:
    """What the first worker of a process loads, and the others share: the model is only read."""

    model: Whisper
    name: str  # the model's
    precision: str  # as resolved: "int8+bf16"
    language: str | None  # the `language` setting as a code, checked against the model
    cores: Cores


class Worker:
    def __init__(self, cfg: Config, stop: threading.Event | None = None, second: bool = False) -> None:
        self.cfg = cfg
        self.stop = stop or threading.Event()
        # A second worker of its process (processes/crew.py) takes a job only beside another one:
        # a job alone runs fastest in the main thread (engine/cores.py).
        self.second = second
        engine = connect(cfg.db)
        self.queue = JobQueue(engine, lease=timedelta(seconds=cfg.lease_seconds), inbox=cfg.inbox)
        self.queue.adopt_absolute_paths()
        self.waiter = Waiter(engine)
        # A second worker waits for its first to take a job, which no announcement tells it.
        self.idle_max = HEARTBEAT_SECONDS if self.waiter.wakes_on_work and not second else IDLE_MAX_SECONDS
        self.recover_seconds = min(RECOVER_SECONDS, cfg.lease_seconds / RECOVER_PER_LEASE)
        self.slot = take_slot(slots_dir(cfg.db))
        self.name = self.slot.name  # the holder of the jobs this worker runs
        self.registry = Registry(engine, self.name)
        self.heartbeat = Heartbeat(self.queue, self.registry, self.name,
                                   min(HEARTBEAT_SECONDS, cfg.lease_seconds / BEATS_PER_LEASE))
        # Tests replace the guard with one whose probes and clock are injected.
        self.guard = Guard(self.report, self.stop.wait, low_memory_mb=cfg.min_available_mb)
        self.clock: Callable[[], float] = time.monotonic  # times windows; tests inject one that ignores other load
        self.engine: Engine | None = None
        self.resident: Resident | None = None
        self.model_name = cfg.model
        self.precision = cfg.precision
        self.current_job: int | None = None
        self.recycle = False  # set when RSS outgrew its cap: exit so the service manager restarts us
        self._last_beat = 0.0
        self._last_recovery = 0.0
        self._storage_backoff = STORAGE_BACKOFF_START_SECONDS
        self.results = Results(cfg, self.queue, self.name)
        self.remembered = Remembered(cfg.cache_dir)  # start-up checks' answers from earlier starts
        self.speakers = Speakers(self.queue, self.name, cfg.vad_threshold, int(cfg.chunk_seconds * SAMPLE_RATE),
                                 self.remembered)

    def initialize(self, resident: Resident | None = None) -> Resident | None:
        """Load the model, or share `resident`, another worker's in this process; then join the queue.
        Returns what it shares, None when asked to stop while waiting for memory to load the model."""
        self._recover()
        if resident is None:
            resident = self._load()
            if resident is None:
                return None  # run() returns at once
            self.results.announce_left()  # once per process
        self.resident = resident
        self.model_name, self.precision = resident.name, resident.precision
        self.engine = Engine(resident.model, DecodeSettings(language=resident.language, beam_size=self.cfg.beam_size,
                                                            chunk_seconds=self.cfg.chunk_seconds, task=self.cfg.task,
                                                            prompt=self.cfg.prompt or "",
                                                            chinese_script=self.cfg.chinese_script, vad=self.cfg.vad,
                                                            vad_threshold=self.cfg.vad_threshold))
        for row in self.registry.register(resident.name, resident.precision):
            logger.info("forgetting worker {} (pid {} on {}), gone since {}", row.id, row.pid, row.host,
                        row.heartbeat_at.isoformat(timespec="seconds"))
        self.report(Status(WorkerState.IDLE))
        self.heartbeat.start()
        return resident

    def _load(self) -> Resident | None:
        _language_code(self.cfg.language)  # a wrong name fails before the model is loaded
        resolved = resolve_model(self.cfg.model, self.cfg.cache_dir / "models")
        if not self._wait_until_model_fits(resolved):
            return None
        threads = precision.use_threads(self.cfg.threads)
        if self.cfg.speakers != "off":
            self.speakers.available()
        model, device = precision.to_device(load_resolved(resolved), precision.pick_device())
        language = _language_code(self.cfg.language, model.is_multilingual, resolved.name)
        chosen = precision.choose(self.cfg.precision, device, self.remembered)
        model = precision.convert(model, chosen)
        release_memory()  # what the loading and the conversion freed: a model's size, kept by glibc otherwise
        logger.info("worker ready ({}): model {} from {} on {}, {} weights ({:.0f} MB), {} torch threads; "
                    "queue {}; {:.2f} s after the process started", self.name, resolved.name, resolved.source, device,
                    chosen, precision.weight_bytes(model) / MB, threads, describe(self.cfg.db),
                    time.time() - psutil.Process().create_time())
        return Resident(model, resolved.name, chosen, language, Cores(threads))

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

    def run(self, exit_when_empty: bool = False, drained: threading.Event | None = None) -> None:
        """Work until stopped; idle waits back off from IDLE_MIN to `idle_max` and reset on work (or,
        on PostgreSQL, when a job is announced). `exit_when_empty`: return once nothing is left to
        claim, and, for a second worker, once its process's first worker has found that (`drained`)."""
        delay = IDLE_MIN_SECONDS
        while not self.stop.is_set():
            if self.run_once():
                delay = IDLE_MIN_SECONDS
                continue
            if exit_when_empty and (drained is None or drained.is_set()):
                break
            if time.monotonic() - self._last_beat >= HEARTBEAT_SECONDS:
                self.report(Status(WorkerState.IDLE))
            # Short enough to beat, and to look for dead workers' jobs, while no job is announced.
            wait = min(delay, self.recover_seconds)
            delay = IDLE_MIN_SECONDS if self.waiter.wait(self.stop, wait) else min(delay * 2, self.idle_max)

    def run_once(self) -> bool:
        """Claim and process one job; False when the queue had nothing to claim (or we must stop)."""
        if self.second and (self.resident is None or not self.resident.cores.running):
            return False
        if not self.guard.check():  # don't start a job under memory pressure
            return False
        try:
            if time.monotonic() - self._last_recovery >= self.recover_seconds:
                self._recover()
            job = self.queue.claim(self.name)
        except Exception as e:
            if not storage_error(e):
                raise
            self._pause_for_storage(None, e)
            return True
        if job is None:
            return False
        assert job.id is not None
        self.current_job = self.heartbeat.job = job.id
        self.report(Status(WorkerState.BUSY))
        try:
            self._process(job)
            self._storage_backoff = STORAGE_BACKOFF_START_SECONDS
        except LeaseLost as e:  # this worker stalled past its lease (a sleeping laptop): another has the job
            logger.warning("job {}: {}; leaving it to the worker that has it now", job.id, e)
        except OutputError as e:  # its transcript can never be written there: the next job goes ahead
            self.queue.fail(job.id, self.name, f"{Path(job.path).name}: {e}")
            logger.warning("job {} failed: {}: {}", job.id, Path(job.path).name, e)
        except Exception as e:
            if storage_error(e):  # disk full, I/O error: not the file's fault
                self._pause_for_storage(job, e)
            else:  # one bad job must not take the worker down
                logger.exception("job {}: unexpected error", job.id)
                self.queue.fail(job.id, self.name, f"{Path(job.path).name}: unexpected error ({type(e).__name__}: "
                                                   f"{e}); see {logs.log_file(self.cfg.log_dir, 'worker')}")
        finally:
            self.current_job = self.heartbeat.job = None
            self.report(Status(WorkerState.IDLE))
        checkpoint(self.queue.engine)  # between jobs, so `sqlite3` readers cannot keep the WAL growing
        self._check_rss()
        return True

    def shutdown(self) -> None:
        self.heartbeat.stop()
        self.results.close()
        self.waiter.close()
        self.registry.unregister()
        self.queue.engine.dispose()
        self.slot.release()
        logger.info("worker stopped")

    def report(self, status: Status) -> None:
        """The worker's state for `status` (the guard reports at every wait); the heartbeat thread
        keeps its heartbeat and its lease fresh in between."""
        self._last_beat = time.monotonic()
        try:
            self.registry.heartbeat(status.state, status.reason, rss_mb(), self.current_job)
        except Exception as e:
            if not storage_error(e):
                raise
            logger.warning("could not record the worker's state: {}", getattr(e, "orig", e))  # not worth stopping for

    def _pause_for_storage(self, job: Job | None, error: Exception) -> None:
        """A read or write failed (disk full, I/O error, a share gone). Put the job back in the queue
        with its checkpoint, uncounted, to wait its own time behind the jobs that can go ahead
        (JobQueue.defer), and wait, longer each time while the trouble lasts; nothing is marked
        failed. While the database itself cannot be written, keep trying to put the job back."""
        job_id = None if job is None else job.id
        source = None if job is None else self.queue.location(job)
        while True:
            # SQLAlchemy's message repeats the whole statement; the driver's says what went wrong.
            reason = str(getattr(error, "orig", error))
            reading = isinstance(error, OSError) and error.filename is not None and source == Path(error.filename)
            verb = "read" if reading else "write"
            what = f"job {job_id} is put back and tried again" if job_id is not None else "trying again"
            logger.warning("cannot {} ({}): {} in {:.0f} s", verb, reason, what, self._storage_backoff)
            try:
                if job_id is not None:
                    wait = self.queue.defer(job_id, self.name, f"cannot {verb}: {reason}")
                    logger.info("job {} waits {:.0f} s, behind the jobs that can go ahead", job_id, wait)
                    job_id = None
            except LeaseLost:
                job_id = None
            except Exception as e:
                if not storage_error(e):
                    raise
                error = e
            stopping = self.stop.wait(self._storage_backoff)
            self._storage_backoff = min(self._storage_backoff * 2, STORAGE_BACKOFF_MAX_SECONDS)
            if job_id is None:
                return
            if stopping:  # left `running`: this worker's next start takes it back
                logger.warning("job {} could not be put back in the queue: {}", job_id, getattr(error, "orig", error))
                return

    def _check_rss(self) -> None:
        """Long-lived whisper processes leak; past the cap, exit between jobs for a fresh start."""
        rss = rss_mb()
        if rss > self.cfg.max_rss_mb:
            logger.warning("RSS {:.0f} MB is above the {:.0f} MB cap; exiting for a fresh restart", rss,
                           self.cfg.max_rss_mb)
            self.recycle = True
            self.stop.set()

    def _recover(self) -> None:
        """Requeue the jobs of workers that died: this one's previous life, and any whose lease ran out."""
        self._last_recovery = time.monotonic()
        for job in self.queue.recover(self.name, self.cfg.max_attempts):
            logger.warning("recovered job {} ({}) left running by a worker that stopped: now {}",
                           job.id, Path(job.path).name, job.status.value)

    def _process(self, job: Job) -> None:
        """Check the file again (it may have changed or been refused before), then transcribe it, or
        render the transcript of the same content done earlier."""
        assert job.id is not None
        path = self.queue.location(job)
        reason = refusal(path)
        seen = None
        if reason is None:
            try:
                seen = fingerprint(path)
            except OSError as e:
                if storage_error(e):  # a share gone, an I/O error: the file is not at fault
                    raise OSError(e.errno, e.strerror, str(path)) from e  # naming the file: a read
                reason = f"cannot read the file: {e.strerror}"
            try:
                settings = self._settings_of(job)
            except (SettingsError, ConfigError) as e:
                reason, seen = str(e), None
        if seen is None:
            self.queue.fail(job.id, self.name, f"{path.name}: {reason}")
            logger.warning("job {} failed: {}: {}", job.id, path.name, reason)
            return
        job, restarted = self.queue.verify(job.id, self.name, seen, self.model_name, self.precision, settings)
        if job.status == JobStatus.SUPERSEDED:
            logger.info("job {}: {}: {}", job.id, path.name, job.error)
            return
        if job.status == JobStatus.QUEUED:
            logger.info("job {}: {} now holds what another worker is transcribing; it waits for that job",
                        job.id, path.name)
            return
        if restarted:
            logger.info("job {}: {}; starting over", job.id, restarted)
        twin = self.queue.finished_twin(job, self.model_name)
        if twin is None:
            assert self.resident is not None
            with self.resident.cores.job():
                self._transcribe(job, seen, settings)
            return
        assert twin.id is not None
        segments, turns = self.speakers.relabel(twin.id, tuple(self.queue.segments(twin.id)), str(settings["speakers"]))
        written = self.results.write(job, Transcript(segments, twin.language, twin.model, twin.audio_seconds,
                                                     twin.announced_seconds, name=path.stem, turns=turns))
        self.results.end(job, written, JobStatus.DUPLICATE, duplicate_of=twin.id, audio_seconds=twin.audio_seconds,
                         rtf=0.0, progress=1.0, language=twin.language, model=twin.model, precision=twin.precision,
                         announced_seconds=twin.announced_seconds)

    def _settings_of(self, job: Job) -> dict[str, str | None]:
        """The job's complete settings: what its folders asked for when it was queued (looked up now
        if they never were), this worker's settings for the rest; checked against this model."""
        assert self.engine is not None
        asked = (settings_for(self.queue.location(job), self.cfg.inbox) if job.asked is None
                 else json.loads(job.asked))
        where = f" (check {SETTINGS_FILE} in its folder)" if asked else ""
        defaults = {"language": self.cfg.language, "task": self.cfg.task, "prompt": self.cfg.prompt or "",
                    "chinese_script": self.cfg.chinese_script, "speakers": self.cfg.speakers}
        settings = defaults | asked
        try:
            settings["language"] = _language_code(settings["language"], self.engine.model.is_multilingual,
                                                  self.model_name)
            speaker_bounds(str(settings["speakers"]))
            self.engine.check(replace(self.engine.settings, **_decoding(settings)))
        except ConfigError as e:
            raise ConfigError(f"{e}{where}") from e
        return settings

    def _transcribe(self, job: Job, seen: Fingerprint, settings: dict[str, str | None]) -> None:
        """Window by window, committing each window's segments with its checkpoint."""
        assert self.engine is not None and self.resident is not None and job.id is not None
        path = self.queue.location(job)
        start = self.queue.checkpoint_of(job)
        if start.offset_seconds:
            logger.info("job {}: resuming {} at {:.1f} s", job.id, path.name, start.offset_seconds)
        else:
            logger.info("job {}: transcribing {}", job.id, path.name)
        expected = probe_seconds(path)
        self.engine.settings = replace(self.engine.settings, batch_size=self.guard.batch_size(self.cfg.batch_size),
                                       **_decoding(settings))
        began = window_began = self.clock()
        processed = decoded = start.offset_seconds  # resumed at the very end: no window, nothing new decoded
        language = start.language
        heard: list[bytes] | None = []  # the windows' speech probabilities: the speaker pass needs them
        cores = self.resident.cores
        together = cores.share()
        try:
            for window in self.engine.windows(path, start):
                if heard is not None and window.speech is not None:
                    heard.append(window.speech)
                else:
                    heard = None
                now = self.clock()
                # The CPU's pace shows only in windows the model ran on in full: a skipped window's
                # milliseconds say nothing, and a short one (a lone sentence) still pays a whole encoder pass.
                full = window.model_seconds >= PACE_MIN_SHARE * self.cfg.chunk_seconds
                pace = (now - window_began) / window.model_seconds if full else None
                processed, decoded = window.checkpoint.offset_seconds, window.decoded_seconds
                language = window.checkpoint.language
                rtf = (now - began) / max(processed - start.offset_seconds, 1e-6)
                self.queue.save_window(job.id, self.name, window, expected, rtf, self.model_name, self.precision)
                release_memory()
                self.report(Status(WorkerState.BUSY))
                if _changed(path, seen):
                    self.queue.release(job.id, self.name)
                    logger.info("job {}: {} changed while it was being transcribed; it is read again", job.id,
                                path.name)
                    return
                if self.stop.is_set() or not self.guard.check(pace, together):
                    self.queue.release(job.id, self.name)
                    logger.info("job {}: stopped at {:.1f} s; it resumes there next time", job.id, processed)
                    return
                together = cores.share()
                window_began = self.clock()
            announced = _announced(expected, decoded)
            if announced is not None:
                logger.warning("job {}: {}: the audio ended at {:.1f} s of the {:.1f} s its header announced (cut "
                               "short while downloaded or copied?); transcribed what there is", job.id, path.name,
                               decoded, announced)
            labels = self.speakers.label(job.id, path, tuple(self.queue.segments(job.id)), str(settings["speakers"]),
                                         self.stop, start.offset_seconds, heard)
            if labels is None:  # all its windows are kept: next time only the speaker labels are made
                self.queue.release(job.id, self.name)
                logger.info("job {}: stopped while labelling speakers; it resumes there next time", job.id)
                return
            transcript = Transcript(labels[0], language, self.model_name, decoded, announced, name=path.stem,
                                    turns=labels[1])
            written = self.results.write(job, transcript)
        except AudioError as e:
            self.queue.fail(job.id, self.name, f"{path.name}: {e}")
            logger.warning("job {} failed: {}: {}", job.id, path.name, e)
            return
        self.results.end(job, written, JobStatus.DONE, progress=1.0, audio_seconds=decoded, model=self.model_name,
                         precision=self.precision, announced_seconds=announced)


def _decoding(settings: dict[str, str | None]) -> dict[str, str | None]:
    """The job's settings the engine decodes with: all but the speakers setting, applied after it."""
    return {key: value for key, value in settings.items() if key != "speakers"}


def _announced(expected: float | None, decoded: float) -> float | None:
    """The duration the header announced, if the audio ended well before it; else None."""
    if expected is None or expected - decoded <= max(SHORT_AUDIO_MIN_SECONDS, SHORT_AUDIO_SHARE * expected):
        return None
    return expected


def _changed(path: Path, seen: Fingerprint) -> bool:
    """The file was replaced or rewritten since it was read. A deleted file is not: its open
    handle still gives the audio as it was."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    return (st.st_size, st.st_mtime_ns) != (seen.size, seen.mtime_ns)


def _language_code(language: str | None, multilingual: bool = True, model: str = "") -> str | None:
    """The `language` setting as Whisper's code: a code ("de") or a name ("German", "castilian"),
    one that `model` can transcribe."""
    if language is None:
        return None
    key = language.strip().lower()
    code = key if key in LANGUAGES else TO_LANGUAGE_CODE.get(key)
    if code not in (None, "en") and not multilingual:
        raise ConfigError(f"language {language!r}: model {model} is English-only. Choose a multilingual model "
                          f"(e.g. --model {model.removesuffix('.en') if model.endswith('.en') else 'base'}), or "
                          "leave the language unset.")
    if code is not None:
        return code
    raise ConfigError(f"language {language!r} is not one Whisper knows. Give a code or an English name, e.g. "
                      f"en or english, de or german (codes: {', '.join(sorted(LANGUAGES))}), or leave it unset to "
                      "detect the language of each recording.")
