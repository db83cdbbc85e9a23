"""Speaker labels in the worker: after a job's last window, its voice prints are made (a second,
cheap pass over the audio: engine/speakers), kept in the queue, and its words labelled from them.
A stop before the files are written redoes only this pass, never the transcription; a duplicate
is labelled from its twin's kept prints. Speaker labelling is checked once per worker, in a child
process (engine/speakers/probe.py): where it cannot run, transcripts come without labels and the
log says why.
"""

from __future__ import annotations

import time
from pathlib import Path
from threading import Event

import numpy as np
from loguru import logger
from whisper.audio import HOP_LENGTH

from daemon.config import speaker_bounds
from daemon.engine.audio import SAMPLE_RATE
from daemon.engine.remembered import Remembered
from daemon.engine.speakers import attribution, probe
from daemon.engine.speakers.voices import Stopped, VoicePrinter
from daemon.queue import voices
from daemon.queue.jobs import JobQueue
from daemon.transcript import Segment, Turn

Labels = tuple[tuple[Segment, ...], tuple[Turn, ...]]  # the segments with speakers, and the speakers' turns


class Speakers:
    def __init__(self, queue: JobQueue, holder: str, vad_threshold: float, piece_samples: int,
                 remembered: Remembered) -> None:
        self.queue, self.holder, self.vad_threshold = queue, holder, vad_threshold
        self.piece_samples = piece_samples  # the engine's: what it scored speech in
        self.remembered = remembered  # the check's answer from an earlier start
        self.unavailable: str | None = None
        self._probed = False
        self._printer: VoicePrinter | None = None  # its network loads with the first job that needs it (~40 MB)

    def available(self) -> bool:
        """Whether speaker labelling runs here: checked once (remembered from an earlier start when it
        can be). The worker asks before it loads Whisper when its own setting wants labels, so the
        check's child process (torch and CAM++, ~300 MB) never adds to the worker's peak memory; a
        folder's setting may ask later."""
        if not self._probed:
            self._probed = True
            self.unavailable = probe.failure(remembered=self.remembered)
            if self.unavailable:
                logger.warning("speaker labels are off on this machine: {}; transcripts come without them",
                               self.unavailable)
            else:
                self._printer = VoicePrinter(self.piece_samples)
        return self.unavailable is None

    def label(self, job_id: int, path: Path, segments: tuple[Segment, ...], setting: str,
              stop: Event, heard_from: float = 0.0, heard: list[bytes] | None = None) -> Labels | None:
        """The job's segments labelled from the voice prints of `path`, which are kept for its duplicates;
        None when `stop` was set meanwhile (a minute of prints for an hour of audio: a stop must not wait).
        `heard`: the speech probabilities (Window.speech) of the windows decoded from `heard_from` seconds
        on, None when one came without them."""
        bounds = speaker_bounds(setting)
        if bounds is None or not segments or not self.available():
            return segments, ()
        began = time.monotonic()
        assert self._printer is not None
        try:
            known = None if heard is None else (round(heard_from * SAMPLE_RATE) // HOP_LENGTH,
                                                 np.frombuffer(b"".join(heard), "<f4"))
            prints = self._printer.voices(path, self.vad_threshold, stop, known)
        except Stopped:
            return None
        voices.save(self.queue, job_id, self.holder, prints)
        labelled, turns = attribution.labelled(segments, prints, bounds)
        logger.info("job {}: {} voice prints, {} in {:.2f} s", job_id, len(prints),
                    _told(len({s.speaker for s in labelled if s.speaker})), time.monotonic() - began)
        return labelled, turns

    def relabel(self, twin_id: int, segments: tuple[Segment, ...], setting: str) -> Labels:
        """A duplicate's segments labelled from its twin's kept prints (the same settings made them)."""
        bounds = speaker_bounds(setting)
        if bounds is None or not segments or not self.available():
            return segments, ()
        return attribution.labelled(segments, voices.of(self.queue, twin_id), bounds)


def _told(speakers: int) -> str:
    return f"{speakers} speakers labelled" if speakers else "one voice: no labels"
