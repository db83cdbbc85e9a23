"""Convert an openai-whisper checkpoint (.pt) into the ggml file whisper.cpp loads.

Byte for byte the layout of whisper.cpp's `models/convert-pt-to-ggml.py` (use_f16 = 1), written
from its description in shared/models.md, so whisper.cpp runs the very weights our worker and the
openai-whisper CLI load (bench/compare.py). All integers are int32 little-endian:

- header: magic 0x67676d6c, the 10 ModelDimensions (n_vocab, n_audio_ctx, n_audio_state,
  n_audio_head, n_audio_layer, n_text_ctx, n_text_state, n_text_head, n_text_layer, n_mels),
  then use_f16 = 1;
- mel filter bank: rows, cols, float32 data (openai-whisper's assets/mel_filters.npz, mel_<n_mels>);
- vocabulary: count, then each token's byte length and bytes in rank order, from
  assets/gpt2.tiktoken (English-only) or multilingual.tiktoken (n_vocab >= 51865), base64-decoded;
- each tensor of the state dict, squeezed (conv biases reshaped to (n, 1)); float32 when it has
  one dimension, is a conv bias or a positional embedding, float16 otherwise; header
  `n_dims, len(name), ftype (0 f32, 1 f16)`, the dims in reverse order, the name, the raw data.

    .venv/bin/python bench/ggml.py CHECKPOINT.pt OUT.bin
    .venv/bin/python bench/ggml.py --model tiny.en        # the worker's checkpoint, cached in bench/out/ggml/
"""

from __future__ import annotations

import argparse
import base64
import os
import struct
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

MAGIC = 0x67676D6C  # "ggml"
DIMS_ORDER = ("n_vocab", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer",
              "n_text_ctx", "n_text_state", "n_text_head", "n_text_layer", "n_mels")
F32_NAMES = {"encoder.conv1.bias", "encoder.conv2.bias",
             "encoder.positional_embedding", "decoder.positional_embedding"}
CONV_BIASES = {"encoder.conv1.bias", "encoder.conv2.bias"}
SKIP = {"alignment_heads"}  # a (sparse) buffer some checkpoints carry; not a weight whisper.cpp knows

OUT_DIR = Path(__file__).resolve().parent / "out" / "ggml"


def _assets() -> Path:
    import whisper  # openai-whisper: its assets folder has the mel filters and the tokenizer files

    return Path(whisper.__file__).parent / "assets"


def _vocabulary(n_vocab: int) -> list[bytes]:
    name = "multilingual.tiktoken" if n_vocab >= 51865 else "gpt2.tiktoken"
    ranked: list[tuple[int, bytes]] = []
    for line in (_assets() / name).read_text(encoding="ascii").splitlines():
        if line.strip():
            token, rank = line.split()
            ranked.append((int(rank), base64.b64decode(token)))
    ranked.sort()
    if [r for r, _ in ranked] != list(range(len(ranked))):
        raise ValueError(f"{name}: ranks are not 0..{len(ranked) - 1}")
    return [token for _, token in ranked]


def _i32(f: BinaryIO, *values: int) -> None:
    f.write(struct.pack(f"<{len(values)}i", *values))


def write_ggml(checkpoint: dict[str, Any], f: BinaryIO) -> dict[str, int]:
    """Write `checkpoint` ({"dims": {...}, "model_state_dict": {...}}) to `f`; returns tensor counts."""
    dims = checkpoint["dims"]
    if not isinstance(dims, dict):  # a ModelDimensions dataclass
        dims = vars(dims)
    state = checkpoint["model_state_dict"]

    _i32(f, MAGIC, *(int(dims[k]) for k in DIMS_ORDER), 1)  # use_f16 = 1

    with np.load(_assets() / "mel_filters.npz") as npz:
        filters = np.asarray(npz[f"mel_{dims['n_mels']}"], dtype="<f4")
    _i32(f, *filters.shape)
    f.write(np.ascontiguousarray(filters).tobytes())

    tokens = _vocabulary(int(dims["n_vocab"]))
    _i32(f, len(tokens))
    for token in tokens:
        _i32(f, len(token))
        f.write(token)

    counts = {"f16": 0, "f32": 0}
    for name, tensor in state.items():
        if name in SKIP or name.endswith(".alignment_heads"):
            continue
        data = tensor.detach().cpu().float().squeeze().numpy()  # via f32: exact for f16/bf16 sources
        if name in CONV_BIASES:
            data = data.reshape(data.shape[0], 1)
        n_dims = data.ndim
        ftype = 0 if n_dims < 2 or name in F32_NAMES else 1
        data = np.ascontiguousarray(data, dtype="<f4" if ftype == 0 else "<f2")
        counts["f32" if ftype == 0 else "f16"] += 1
        encoded = name.encode("utf-8")
        _i32(f, n_dims, len(encoded), ftype)
        _i32(f, *reversed(data.shape))
        f.write(encoded)
        f.write(data.tobytes())
    return counts


def convert(checkpoint_path: Path, out_path: Path) -> Path:
    """Convert `checkpoint_path` to `out_path` (written under a temporary name, then renamed)."""
    import torch

    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(f".{out_path.name}.partial")
    with open(partial, "wb") as f:
        write_ggml(checkpoint, f)
    os.replace(partial, out_path)
    return out_path


def cached_ggml(checkpoint_path: Path, out_dir: Path = OUT_DIR) -> Path:
    """The ggml file for `checkpoint_path`, converted once. The daemon's cached checkpoint names
    carry a content hash (`tiny.en-17c4….pt`), so the stem is a sufficient cache key."""
    out = out_dir / f"ggml-{checkpoint_path.stem}.bin"
    if out.is_file() and out.stat().st_mtime >= checkpoint_path.stat().st_mtime:
        return out
    started = time.monotonic()
    convert(checkpoint_path, out)
    print(f"  converted {checkpoint_path.name} -> {out.name} ({out.stat().st_size / 1e6:.1f} MB) in "
          f"{time.monotonic() - started:.1f} s", file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", type=Path, help="openai-whisper .pt checkpoint")
    parser.add_argument("out", nargs="?", type=Path, help="ggml .bin to write")
    parser.add_argument("--model", help="instead of CHECKPOINT: the checkpoint our worker loads for this model "
                                        "(e.g. tiny.en, base), converted into bench/out/ggml/")
    args = parser.parse_args()
    if args.model:
        import common

        print(cached_ggml(common.converted_checkpoint(args.model)))
    elif args.checkpoint and args.out:
        print(convert(args.checkpoint, args.out))
    else:
        parser.error("give CHECKPOINT OUT, or --model NAME")


if __name__ == "__main__":
    main()
