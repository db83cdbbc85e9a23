"""Helpers for the status page's tests: a queue with jobs in every state, made through the queue's
own code (no model: these tests are about what the page serves, not about transcription), and the
page's client."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from starlette.testclient import TestClient

from daemon.config import Config, cue_rules
from daemon.files.outputs import write_atomic
from daemon.formats import render
from daemon.queue.db import Job, JobStatus, connect
from daemon.queue.jobs import JobQueue
from daemon.transcript import Checkpoint, Segment, Transcript, Window, Word
from daemon.web.app import create_app

HOLDER = "web-test-worker"
LOCAL = "http://127.0.0.1:8470"  # what a browser on this machine sends as the Host


@dataclasses.dataclass
class Site:
    cfg: Config
    queue: JobQueue  # a writer, as the worker and the watcher are

    def client(self, base_url: str = LOCAL, **settings: object) -> TestClient:
        return TestClient(create_app(dataclasses.replace(self.cfg, **settings)), base_url=base_url,
                          follow_redirects=False)

    def recording(self, name: str, data: bytes | None = None) -> Path:
        path = self.cfg.inbox / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if data is not None else name.encode() * 50)
        return path

    def queued(self, name: str, data: bytes | None = None) -> Job:
        return self.queue.enqueue(self.recording(name, data)).job

    def done(self, name: str, words: list[tuple[float, float, str]], formats: tuple[str, ...] = ("srt", "json"),
             data: bytes | None = None) -> Job:
        """A job transcribed as `words` and written in `formats`, as a worker would."""
        job = self.queued(name, data)
        claimed = self.queue.claim(HOLDER)
        assert claimed is not None and claimed.id == job.id
        segment = Segment(words[0][0], words[-1][1], "".join(w for _, _, w in words).strip(),
                          words=tuple(Word(s, e, w) for s, e, w in words))
        end = words[-1][1]
        self.queue.save_window(job.id, HOLDER, Window((segment,), Checkpoint(end, (), "en"), end, end), end, 0.1,
                               "tiny.en", "fp32")
        transcript = Transcript((segment,), "en", "tiny.en", end)
        texts = {fmt: render(fmt, transcript, cue_rules(self.cfg)) for fmt in formats}
        for fmt, path in self.queue.reserve_outputs(job.id, HOLDER, self.cfg.outbox, texts).items():
            write_atomic(path, texts[fmt])
        return self.queue.finish(job.id, HOLDER, JobStatus.DONE, model="tiny.en")

    def failed(self, name: str, error: str) -> Job:
        job = self.queued(name)
        self.queue.claim(HOLDER)
        return self.queue.fail(job.id, HOLDER, error)


def make_site(tmp_path: Path, db: str | None = None) -> Site:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir(exist_ok=True)
    outbox.mkdir(exist_ok=True)
    cfg = Config(inbox=inbox, outbox=outbox, db=db or str(tmp_path / "jobs.db"), log_dir=tmp_path / "logs")
    return Site(cfg, JobQueue(connect(cfg.db), inbox=inbox))
