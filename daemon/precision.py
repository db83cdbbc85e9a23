"""Which number format the resident model uses, and how many threads compute with it.

The design keeps weights resident in half precision. On CUDA and Apple MPS that is fp16. On a
CPU, fp16 arithmetic can be a trap (1.6 GFLOPS on AVX-512 machines without FP16 units, against
398 GFLOPS for bf16), so `auto` measures the half formats on this CPU and keeps the fastest,
falling back to fp32 only when neither half format keeps up with it.

One matrix is held tighter on a CPU: the token embedding, which is also the output projection,
read whole for every decoded token (51,864 rows: 40 MB in bf16 for tiny.en, more than the last
level cache). Held as int8 rows with one scale per row, the product reads half as many bytes:
1.30 → 0.37 ms a token here, with the same transcripts on our benchmark clips.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

import psutil
import torch
import torch.nn.functional as F
from loguru import logger
from torch import Tensor
from whisper.model import Whisper

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PROBE_SIZE = 512  # a matmul the size of base's attention projections
PROBE_REPEATS = 20
HOPELESS = 10  # a half format this much slower than fp32 on a small product is not measured further
KEEPS_UP = 1.1  # a half format may be this much slower than fp32 and still be chosen (half the memory)


def _matmul_seconds(dtype: torch.dtype, size: int = PROBE_SIZE, repeats: int = PROBE_REPEATS) -> float:
    """Seconds per product of two size × size matrices."""
    a = torch.randn(size, size).to(dtype)
    torch.mm(a, a)  # warm up kernels
    began = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, a)
    return (time.perf_counter() - began) / repeats


def _half_seconds(dtype: torch.dtype, fp32: float) -> float:
    # A quick look at a small product first: fp16 without hardware support takes ~100 ms a
    # full-size product here, which would make the probe cost 2 s of every start.
    small = PROBE_SIZE // 4
    if _matmul_seconds(dtype, small, 1) > HOPELESS * fp32 / (PROBE_SIZE // small) ** 3:
        return float("inf")
    return _matmul_seconds(dtype)


def use_physical_cores() -> int:
    """Give torch one thread per physical core; returns that count."""
    threads = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    torch.set_num_threads(threads)  # hyper-threads share the matmul units: no gain, more heat
    return threads


def measure_cpu() -> dict[str, float]:
    """Seconds per probe product in each format on this CPU (inf: a half format not worth measuring)."""
    fp32 = _matmul_seconds(torch.float32)
    return {"fp32": fp32, **{name: _half_seconds(DTYPES[name], fp32) for name in ("bf16", "fp16")}}


def fastest(seconds: Mapping[str, float]) -> str:
    """The faster half format if it keeps up with fp32 (within KEEPS_UP), else fp32."""
    half = min(("bf16", "fp16"), key=seconds.__getitem__)
    return half if seconds[half] <= seconds["fp32"] * KEEPS_UP else "fp32"


def choose(requested: str, device: str) -> str:
    """Resolve `auto` for this device; explicit choices are kept."""
    if requested != "auto":
        return requested
    if device in ("cuda", "mps"):
        return "fp16"
    seconds = measure_cpu()
    chosen = fastest(seconds)
    logger.info("precision auto → {} (matmul {})", chosen,
                ", ".join(f"{name} {s * 1e3:.2f} ms" for name, s in seconds.items()))
    return chosen


def pick_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def to_device(model: Whisper, device: str) -> tuple[Whisper, str]:
    """Move the model, falling back to the CPU (with a log line) when the device refuses it."""
    if device == "cpu":
        return model, device
    try:
        # openai-whisper keeps alignment_heads as a sparse buffer, which MPS cannot hold; it only
        # serves word timestamps, which we don't use.
        model.register_buffer("alignment_heads", model.alignment_heads.to_dense(), persistent=False)
        return model.to(device), device
    except (RuntimeError, NotImplementedError) as e:
        logger.warning("could not run the model on {} ({}); using the CPU instead", device, e)
        return model.to("cpu"), "cpu"


class Int8Embedding(torch.nn.Module):
    """A token embedding held as int8 rows and one scale per row (weight-only quantization)."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        scales = (weight.float().abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
        self.register_buffer("rows", torch.round(weight.float() / scales[:, None]).to(torch.int8))
        self.register_buffer("scales", scales.to(weight.dtype))

    def forward(self, tokens: Tensor) -> Tensor:
        return F.embedding(tokens, self.rows).to(self.scales.dtype) * self.scales[tokens, None]

    @property
    def weight(self) -> Tensor:
        """The whole matrix, dequantized: only for whisper's own code (language detection, once a file)."""
        return self.rows.to(self.scales.dtype) * self.scales[:, None]

    def logits(self, hidden: Tensor) -> Tensor:
        rows = hidden.reshape(-1, hidden.shape[-1]).to(self.scales.dtype)
        out = torch.ops.aten._weight_int8pack_mm(rows, self.rows, self.scales)
        return out.float().reshape(*hidden.shape[:-1], -1)


def convert(model: Whisper, precision: str) -> Whisper:
    """Hold the weights in `precision`; LayerNorms stay fp32 because whisper computes them in fp32.

    On a CPU, a half-precision model's token embedding becomes an `Int8Embedding`.
    """
    model = model.to(DTYPES[precision])
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.float()
    embedding = model.decoder.token_embedding
    if precision != "fp32" and embedding.weight.device.type == "cpu":
        model.decoder.token_embedding = Int8Embedding(embedding.weight.detach())  # type: ignore[assignment]
    return model


def weight_bytes(model: Whisper) -> int:
    tensors = [*model.parameters(), *(b for m in model.modules() if isinstance(m, Int8Embedding) for b in m.buffers())]
    return sum(t.numel() * t.element_size() for t in tensors)
