"""Which number format the resident model uses, and Whisper decoding in that format.

The design keeps weights resident in half precision. On CUDA and Apple MPS that is fp16. On a
CPU, fp16 arithmetic can be a trap (1.6 GFLOPS on AVX-512 machines without FP16 units, against
398 GFLOPS for bf16), so `auto` measures the half formats on this CPU and keeps the fastest,
falling back to fp32 only when neither half format keeps up with it.
"""

from __future__ import annotations

import time

import torch
from loguru import logger
from torch import Tensor
from whisper.decoding import DecodingOptions, DecodingResult, DecodingTask
from whisper.model import Whisper

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PROBE_SIZE = 512  # a matmul the size of base's attention projections
PROBE_REPEATS = 20
KEEPS_UP = 1.1  # a half format may be this much slower than fp32 and still be chosen (half the memory)


def _matmul_seconds(dtype: torch.dtype) -> float:
    a = torch.randn(PROBE_SIZE, PROBE_SIZE).to(dtype)
    torch.mm(a, a)  # warm up kernels
    began = time.perf_counter()
    for _ in range(PROBE_REPEATS):
        torch.mm(a, a)
    return time.perf_counter() - began


def choose(requested: str, device: str) -> str:
    """Resolve `auto` for this device; explicit choices are kept."""
    if requested != "auto":
        return requested
    if device in ("cuda", "mps"):
        return "fp16"
    timings = {name: _matmul_seconds(DTYPES[name]) for name in ("fp32", "bf16", "fp16")}
    half = min(("bf16", "fp16"), key=timings.__getitem__)
    chosen = half if timings[half] <= timings["fp32"] * KEEPS_UP else "fp32"
    logger.info("precision auto → {} (matmul {}: {}, fp32 {:.1f} ms)", chosen, half,
                f"{timings[half] * 1e3:.1f} ms", timings["fp32"] * 1e3)
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


def convert(model: Whisper, precision: str) -> Whisper:
    """Hold the weights in `precision`; LayerNorms stay fp32 because whisper computes them in fp32."""
    model = model.to(DTYPES[precision])
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.float()
    return model


def weight_bytes(model: Whisper) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


class _Task(DecodingTask):
    """openai-whisper's decoding, in the model's own dtype: it only knows fp16 and fp32."""

    def _get_audio_features(self, mel: Tensor) -> Tensor:
        dtype = self.model.decoder.token_embedding.weight.dtype
        if mel.shape[-2:] == (self.model.dims.n_audio_ctx, self.model.dims.n_audio_state):
            return mel.to(dtype)
        return self.model.encoder(mel.to(dtype))


def decode(model: Whisper, mel: Tensor, options: DecodingOptions) -> list[DecodingResult]:
    """Decode a batch of log-mel windows, shape (batch, n_mels, frames)."""
    with torch.inference_mode():
        return _Task(model, options).run(mel)
