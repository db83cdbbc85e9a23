"""Which number format the resident model uses, and how many threads compute with it.

The design keeps weights resident in half precision. On CUDA and Apple MPS that is fp16. On a
CPU, fp16 arithmetic can be a trap (1.6 GFLOPS on AVX-512 machines without FP16 units, against
398 GFLOPS for bf16), so `auto` measures the half formats on this CPU and keeps the fastest,
falling back to fp32 only when neither half format keeps up with it.

One matrix is held tighter on a CPU: the token embedding, which is also the output projection,
read whole for every decoded token (51,864 rows: 40 MB in bf16 for tiny.en, more than the last
level cache). Held as int8 rows with one scale per row, the product reads half as many bytes:
1.30 → 0.37 ms a token here, with the same transcripts on our benchmark clips.

`int8` goes further on a CPU, where decoding is a few rows at a time and reading the weights is
most of the work: the decoder's projections, the output projection included, hold int8 weights
(one scale per row) and multiply in int8, each input quantized as it comes (dynamic quantization,
as CTranslate2's int8 does; fbgemm's kernels on x86, qnnpack's on ARM). The rest of the model stays
in the half format (or fp32), and so do the keys and values of the audio, computed once a window,
and the MLP's second projection, whose inputs one int8 scale cannot hold (see `convert`).
`auto` takes it when a decoding step's product is measured faster in int8 than in that format.
A resolved choice names both: "int8+bf16" is an int8 decoder, the rest in bf16.

Chinese is read by the decoder in the model's format (`text_decoder`): under an int8 decoder, the
model wrote 162 wrong characters of 757 on our Mandarin clips against bf16's 152 and fp32's 149,
though its next-token distributions are as close to fp32's as bf16's are (docs/benchmarks.md,
issue 25). That decoder's blocks are a second copy, made from the int8 weights when a Chinese
window first needs it, so that a model that never hears Chinese pays nothing for it.
"""

from __future__ import annotations

import copy
import functools
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping

import psutil
import torch
import torch.nn.functional as F
from loguru import logger
from torch import Tensor
from whisper.model import TextDecoder, Whisper

from daemon.engine.remembered import Remembered, source

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PROBE_SIZE = 512  # a matmul the size of base's attention projections
PROBE_REPEATS = 20
QUICK_TRIES = 10  # of the small product: a busy machine delays a few of them
HOPELESS = 10  # a half format this much slower than fp32 on a small product is not measured further
KEEPS_UP = 1.1  # a half format may be this much slower than fp32 and still be chosen (half the memory)
STEP_ROWS = 5  # a decoding step's rows: one per beam
STEP_SHAPE = (4 * PROBE_SIZE, PROBE_SIZE)  # base's MLP projection, the largest of a decoding step
STEP_REPEATS = 200
INT8 = "int8"
ROWS_AT_ONCE = 4096  # see int8_rows
# Languages whose windows an int8 decoder reads worse than the model's format does (see text_decoder).
IN_MODEL_FORMAT = frozenset({"zh", "yue"})


def fastest_tries(products: Mapping[str, Callable[[], object]], tries: int) -> dict[str, float]:
    """Seconds of the fastest of `tries` runs of each product, taken in turns. Other work on the
    machine slows some runs of each product, not all the runs of one: the fastest run of each is
    what this CPU does, however busy it was when the worker started."""
    for product in products.values():
        product()  # warm up kernels
    best = dict.fromkeys(products, float("inf"))
    for _ in range(tries):
        for name, product in products.items():
            began = time.perf_counter()
            product()
            best[name] = min(best[name], time.perf_counter() - began)
    return best


def use_threads(threads: int = 0) -> int:
    """Give torch `threads` threads, by default (0) one per physical core; returns the count."""
    # Hyper-threads share the matmul units: no gain, more heat.
    threads = threads or psutil.cpu_count(logical=False) or os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def measure_cpu() -> dict[str, float]:
    """Seconds per probe product in each format on this CPU (inf: a half format not worth measuring).

    A quick look at a small product first: fp16 without hardware support takes ~100 ms a
    full-size product here, which would make the probe cost seconds of every start."""
    def products(size: int, names: Iterable[str]) -> dict[str, Callable[[], object]]:
        matrices = {name: torch.randn(size, size).to(DTYPES[name]) for name in names}
        return {name: functools.partial(torch.mm, m, m) for name, m in matrices.items()}

    quick = fastest_tries(products(PROBE_SIZE // 4, DTYPES), QUICK_TRIES)
    hopeless = [name for name in DTYPES if quick[name] > HOPELESS * quick["fp32"]]
    seconds = fastest_tries(products(PROBE_SIZE, [name for name in DTYPES if name not in hopeless]), PROBE_REPEATS)
    return {name: seconds.get(name, float("inf")) for name in ("fp32", "bf16", "fp16")}


def fastest(seconds: Mapping[str, float]) -> str:
    """The faster half format if it keeps up with fp32 (within KEEPS_UP), else fp32."""
    half = min(("bf16", "fp16"), key=seconds.__getitem__)
    return half if seconds[half] <= seconds["fp32"] * KEEPS_UP else "fp32"


def measure_step(weights: str) -> dict[str, float]:
    """Seconds per decoding-step product (STEP_ROWS × STEP_SHAPE) with weights in `weights` and in
    int8 (inf when this build of torch has no int8 kernels for the CPU)."""
    weight = torch.randn(*STEP_SHAPE) / PROBE_SIZE ** 0.5
    rows = torch.randn(STEP_ROWS, STEP_SHAPE[1])
    half = weight.to(DTYPES[weights])
    products: dict[str, Callable[[], object]] = {weights: lambda: F.linear(rows.to(half.dtype), half)}
    try:
        products[INT8] = functools.partial(Int8Linear(*int8_rows(weight), None), rows)
    except RuntimeError:  # no quantized engine in this build
        return {**fastest_tries(products, STEP_REPEATS), INT8: float("inf")}
    return fastest_tries(products, STEP_REPEATS)


def choose(requested: str, device: str, remembered: Remembered | None = None) -> str:
    """Resolve `auto` (and the half format under an `int8` decoder) for this device; explicit
    formats are kept. On a GPU, `auto` and `int8` are fp16: int8 kernels here are the CPU's.
    The CPU's answer is measured once and `remembered` (keyed by the CPU, torch, the thread count and
    this module's code), so later starts skip the probe and keep the same choice."""
    if requested not in ("auto", INT8):
        return requested
    if device in ("cuda", "mps"):
        return "fp16"
    remembered = remembered or Remembered(None)
    key = remembered.key("precision", requested, torch.__version__, torch.get_num_threads(), source(__file__))
    if (kept := remembered.get(key)) is not None:
        logger.info("precision {} → {} (measured at an earlier start on this CPU; {} keeps it)", requested, kept,
                    remembered.path)
        return kept
    chosen = _measure_choice(requested)
    remembered.put(key, chosen)
    return chosen


def _measure_choice(requested: str) -> str:
    threads = torch.get_num_threads()
    # One thread: a product split over two threads waits for the slower, and on a busy machine
    # every run has one thread held up, however many runs are tried. One thread compares the
    # formats' kernels alone (the ratios it measures are those of two threads on a quiet machine).
    torch.set_num_threads(1)
    try:
        seconds = measure_cpu()
        weights = fastest(seconds)
        step = measure_step(weights)
    finally:
        torch.set_num_threads(threads)
    int8 = requested == INT8 or step[INT8] < step[weights]
    chosen = f"{INT8}+{weights}" if int8 else weights
    logger.info("precision {} → {} (matmul {}; decoding step {})", requested, chosen,
                ", ".join(f"{name} {s * 1e3:.2f} ms" for name, s in seconds.items()),
                ", ".join(f"{name} {s * 1e3:.3f} ms" for name, s in step.items()))
    return chosen


def formats(chosen: str) -> tuple[bool, str]:
    """A resolved choice as (int8 decoder?, the format of everything else)."""
    int8, _, weights = chosen.rpartition("+")
    return int8 == INT8, weights


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


def int8_rows(weight: Tensor) -> tuple[Tensor, Tensor]:
    """`weight` as int8 rows and one fp32 scale per row, mapping each row's largest magnitude to 127.
    Done ROWS_AT_ONCE rows at a time: the whole of base's embedding in fp32 would be 100 MB more
    at the moment the daemon's memory peaks."""
    rows = torch.empty(weight.shape, dtype=torch.int8)
    scales = torch.empty(len(weight))
    for start in range(0, len(weight), ROWS_AT_ONCE):
        part = weight[start:start + ROWS_AT_ONCE].detach().float()
        part_scales = (part.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)
        scales[start:start + len(part)] = part_scales
        rows[start:start + len(part)] = torch.round(part / part_scales[:, None])
    return rows, scales


def _quantized(rows: Tensor, scales: Tensor) -> Tensor:
    """int8_rows' output as the quantized tensor fbgemm packs."""
    with warnings.catch_warnings():  # torch 2.13 calls quantized tensors deprecated; its int8 kernels take them
        warnings.simplefilter("ignore", UserWarning)
        zero_points = torch.zeros(len(rows), dtype=torch.long)
        return torch._make_per_channel_quantized_tensor(rows, scales.double(), zero_points, 0)


@functools.cache
def reduce_range() -> bool:
    """Whether inputs must be quantized to 7 bits: x86 CPUs without VNNI add pairs of 8-bit products
    in 16 bits, which saturate (fbgemm's reduce_range). Found out by a product that would: inputs
    quantized to 255 against weights of 127 add up to 64,770 a pair."""
    ones = torch.ones(1, 64)
    packed = torch.ops.quantized.linear_prepack(_quantized(*int8_rows(ones)), None)
    return abs(float(torch.ops.quantized.linear_dynamic(ones, packed, False)) - 64) > 0.64


class Int8Linear(torch.nn.Module):
    """A linear layer that multiplies in int8: weights as int8 rows with one scale per row, each
    input quantized as it comes. Keeps its input's format."""

    def __init__(self, rows: Tensor, scales: Tensor, bias: Tensor | None) -> None:
        """`rows`, `scales`: the weight as int8_rows gives it."""
        super().__init__()
        self.packed = torch.ops.quantized.linear_prepack(
            _quantized(rows, scales), None if bias is None else bias.detach().float())
        self.nbytes = rows.numel() + scales.numel() * 4 + (0 if bias is None else bias.numel() * 4)
        self.reduce_range = reduce_range()

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.quantized.linear_dynamic(x.float(), self.packed, self.reduce_range).to(x.dtype)

    def linear(self, dtype: torch.dtype) -> torch.nn.Linear:
        """This layer as a plain one in `dtype`: its int8 weights, multiplied in `dtype`."""
        weight, bias = torch.ops.quantized.linear_unpack(self.packed)
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias is not None, device="meta")
        linear.weight = torch.nn.Parameter(weight.dequantize().to(dtype), requires_grad=False)
        if bias is not None:
            linear.bias = torch.nn.Parameter(bias.detach().to(dtype), requires_grad=False)
        return linear


class Int8Embedding(torch.nn.Module):
    """A token embedding held as int8 rows and one scale per row (weight-only quantization), in
    `dtype`. With `int8_logits`, the output projection multiplies in int8 too (Int8Linear)."""

    def __init__(self, weight: Tensor, dtype: torch.dtype | None = None, int8_logits: bool = False) -> None:
        super().__init__()
        rows, scales = int8_rows(weight)
        self.register_buffer("rows", rows)
        self.register_buffer("scales", scales.to(dtype or weight.dtype))
        self.output = Int8Linear(rows, scales, None) if int8_logits else None

    def weight_only(self, dtype: torch.dtype) -> Int8Embedding:
        """The same int8 rows (shared, not copied), in `dtype`, the output projection in `dtype` too."""
        twin = copy.copy(self)
        twin._buffers = {"rows": self.rows, "scales": self.scales.to(dtype)}
        twin._modules = {}
        twin.output = None
        return twin

    def forward(self, tokens: Tensor) -> Tensor:
        return F.embedding(tokens, self.rows).to(self.scales.dtype) * self.scales[tokens, None]

    @property
    def weight(self) -> Tensor:
        """The whole matrix, dequantized: only for whisper's own code (language detection, once a file)."""
        return self.rows.to(self.scales.dtype) * self.scales[:, None]

    def logits(self, hidden: Tensor) -> Tensor:
        if self.output is not None:
            return self.output(hidden).float()
        rows = hidden.reshape(-1, hidden.shape[-1]).to(self.scales.dtype)
        out = torch.ops.aten._weight_int8pack_mm(rows, self.rows, self.scales)
        return out.float().reshape(*hidden.shape[:-1], -1)


def convert(model: Whisper, precision: str) -> Whisper:
    """Hold the weights in `precision` (a resolved choice); LayerNorms stay fp32 because whisper
    computes them in fp32.

    On a CPU, a half-precision model's token embedding becomes an `Int8Embedding`. Under an int8
    decoder (CPU only), its projections become `Int8Linear`s made from the fp32 weights, except the
    audio's keys and values and the MLP's second projection (both in `dtype`); its embeddings and
    states stay fp32, since most products are int8 anyway.
    """
    int8, weights = formats(precision)
    dtype = DTYPES[weights]
    model.encoder.to(dtype)
    decoder = model.decoder
    if int8:
        if decoder.positional_embedding.device.type != "cpu":
            raise ValueError("an int8 decoder runs on the CPU only")
        for block in decoder.blocks:
            assert block.cross_attn is not None
            block.cross_attn.key.to(dtype)  # the audio's keys and values: computed once a window
            block.cross_attn.value.to(dtype)
            projections = ((block.attn, ("query", "key", "value", "out")), (block.cross_attn, ("query", "out")))
            for attention, names in projections:
                for name in names:
                    linear = getattr(attention, name)
                    setattr(attention, name, Int8Linear(*int8_rows(linear.weight), linear.bias))
            # The MLP's first projection; its second stays in `dtype`: the GELU's outputs it reads
            # have a few channels far larger than the rest, which one int8 scale per input cannot
            # hold (bench/precision_parts.py: in int8 it alone changed 6% of Mandarin's likeliest
            # next tokens against fp32's, every other projection together under 1%).
            block.mlp[0] = Int8Linear(*int8_rows(block.mlp[0].weight), block.mlp[0].bias)
            block.mlp[2].to(dtype)
        embedding = Int8Embedding(decoder.token_embedding.weight.detach(), torch.float32, int8_logits=True)
        decoder.token_embedding = embedding  # type: ignore[assignment]
        decoder.positional_embedding.data = decoder.positional_embedding.float()
    else:
        decoder.to(dtype)
        if weights != "fp32" and decoder.positional_embedding.device.type == "cpu":
            decoder.token_embedding = Int8Embedding(decoder.token_embedding.weight.detach())  # type: ignore[assignment]
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.float()
    return model


_made: weakref.WeakKeyDictionary[Whisper, TextDecoder] = weakref.WeakKeyDictionary()
_making = threading.Lock()


def text_decoder(model: Whisper, language: str | None) -> TextDecoder:
    """The decoder to read `language` with: the model's own, unless it is an int8 decoder and the
    language is one of IN_MODEL_FORMAT; then one in the format of the rest of the model.

    That one is made on first need and kept as long as the model, for every Engine on it (it is
    never changed after). Its blocks' projections are the int8 ones' weights, multiplied in the
    model's format; the rest (the audio's keys and values, the MLP's second projection, the
    LayerNorms and the embedding's int8 rows) is the int8 decoder's own, not copied, but for the
    positional embedding and the rows' scales (0.5 MB for base)."""
    decoder = model.decoder
    if language not in IN_MODEL_FORMAT or not any(isinstance(m, Int8Linear) for m in decoder.modules()):
        return decoder
    with _making:
        if (made := _made.get(model)) is None:
            made = _made[model] = _in_format(decoder, model.encoder.conv1.weight.dtype)
            extra = weight_bytes(made.blocks) - sum(t.numel() * t.element_size() for t in decoder.blocks.parameters())
            logger.info("{} is decoded in {}, which reads it better than the int8 decoder: its projections held a "
                        "second time, {:.0f} MB more", language, _name(made.positional_embedding.dtype), extra / 2**20)
        return made


def _name(dtype: torch.dtype) -> str:
    return next(name for name, d in DTYPES.items() if d == dtype)


def _in_format(decoder: TextDecoder, dtype: torch.dtype) -> TextDecoder:
    """`decoder` (an int8 one) with its Int8Linears as plain layers in `dtype`, sharing the rest."""
    def twin(module: torch.nn.Module) -> torch.nn.Module:
        if isinstance(module, Int8Linear):
            return module.linear(dtype)
        if isinstance(module, Int8Embedding):
            return module.weight_only(dtype)
        made = copy.copy(module)
        made._parameters, made._buffers = dict(module._parameters), dict(module._buffers)
        made._modules = {name: twin(child) for name, child in module._modules.items()}
        return made

    made = twin(decoder)
    assert isinstance(made, TextDecoder)
    made.positional_embedding = torch.nn.Parameter(decoder.positional_embedding.to(dtype), requires_grad=False)
    return made


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the resident weights, int8 ones included."""
    tensors = [*model.parameters(), *(b for m in model.modules() if isinstance(m, Int8Embedding) for b in m.buffers())]
    packed = sum(m.nbytes for m in model.modules() if isinstance(m, Int8Linear))
    return sum(t.numel() * t.element_size() for t in tensors) + packed
