"""A job's output files: which names it may take in the outbox (never another input's, never over
bytes it did not write), recorded in `outputs` before they are written; and whether they are
still there.

Each name belongs to one input for good (`output_names`, whose key is unique): two workers that
choose names at the same moment on PostgreSQL cannot both take one, since the database refuses the
second claim (the later transaction waits for the first and then fails its insert), and that
worker moves on to the next name. A check followed by an insert could not promise that."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Mapping
from pathlib import Path

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from daemon.files.inputs import fingerprint
from daemon.files.outputs import existing, fits, names, output_key, paths
from daemon.queue.db import Job, OutputName, OutputRow


def reserve(session: Session, job: Job, folder: Path, texts: Mapping[str, str]) -> dict[str, Path]:
    """Choose where `job`'s files go, one stem for all its formats (`texts`: format → the text to
    write), and record them, in place of the job's earlier ones, before they are written.

    The input's own earlier files in `folder` are replaced (new content at the same path);
    otherwise the first of `names()` whose every file is owned by no other input and holds no
    bytes this input did not write. Recording the bytes about to be written first means a crash
    between the two steps leaves files this input still recognises as its own."""
    written = session.exec(select(OutputRow).join(Job, col(OutputRow.job_id) == Job.id)
                           .where(Job.path == job.path).order_by(col(OutputRow.id).desc())).all()
    hashes = {o.sha256 for o in written if o.sha256}
    legacy = {o.key for o in written if o.sha256 is None}  # written before hashes were kept
    earlier = dict.fromkeys(Path(o.path).name.removesuffix(f".{o.format}") for o in written
                            if Path(o.path).parent == folder)
    candidates = itertools.chain((paths(folder, stem, texts) for stem in earlier if fits(stem, texts)),
                                 names(folder, Path(job.path).stem, texts))
    for candidate in candidates:
        if all(_ours(session, job.path, path, hashes, legacy) for path in candidate.values()) and _claim(
                session, job.path, candidate.values()):
            session.exec(delete(OutputRow).where(col(OutputRow.job_id) == job.id))  # type: ignore[call-overload]
            for fmt, path in candidate.items():
                session.add(OutputRow(job_id=job.id, format=fmt, path=str(path), key=output_key(path),
                                      sha256=hashlib.sha256(texts[fmt].encode()).hexdigest()))
            return candidate
    raise AssertionError("names() is endless")


def outputs_present(session: Session, job: Job) -> bool:
    """Whether every file written for `job` is still there (seen from this machine)."""
    written = session.exec(select(OutputRow.path).where(OutputRow.job_id == job.id)).all()
    return bool(written) and all(existing(Path(path)) is not None for path in written)


def _claim(session: Session, input_path: str, candidate: Iterable[Path]) -> bool:
    """Make every name of `candidate` the input's own, unless another input (perhaps another worker,
    right now) has one of them: then none of them, and False."""
    keys = [output_key(path) for path in candidate]
    owned = set(session.exec(select(OutputName.key).where(col(OutputName.key).in_(keys),
                                                          OutputName.input == input_path)).all())
    try:
        with session.begin_nested():
            session.add_all(OutputName(key=key, input=input_path) for key in keys if key not in owned)
        return True
    except IntegrityError:
        return False


def _ours(session: Session, input_path: str, path: Path, hashes: set[str | None], legacy: set[str]) -> bool:
    """Whether the input at `input_path` may write `path`: no other input's name, and nothing there
    but what this input wrote (`hashes`, or a `legacy` file of its own written before hashes were kept)."""
    key = output_key(path)
    owner = session.exec(select(OutputName.input).where(OutputName.key == key)).first()
    if owner is not None and owner != input_path:
        return False
    on_disk = existing(path)
    return on_disk is None or key in legacy or _sha256_or_none(on_disk) in hashes


def _sha256_or_none(path: Path) -> str | None:
    try:
        return fingerprint(path).sha256
    except OSError:  # a folder, a link, unreadable: certainly not a transcript we wrote
        return None
