"""The int8 decoder's pieces (precision.Int8Linear, Int8Embedding's int8 logits, reduce_range) and
how `auto` chooses it. The transcripts an int8 decoder writes are in tests/test_precision.py."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from daemon.engine import precision

REPO = Path(__file__).resolve().parent.parent
X86 = platform.machine().lower() in ("x86_64", "amd64")


def test_int8_linear_stays_close_to_the_full_product() -> None:
    torch.manual_seed(0)
    weight, bias = torch.randn(384, 96) / 10, torch.randn(384)
    linear = precision.Int8Linear(*precision.int8_rows(weight), bias)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(5, 1, 96).to(dtype)
        exact = x.float() @ weight.T + bias
        out = linear(x)
        assert out.dtype == dtype and out.shape == (5, 1, 384)  # keeps its input's format and shape
        # int8 weights (one step per row) and 7- or 8-bit inputs: a few percent of the largest value
        assert (out.float() - exact).abs().max() <= 0.03 * exact.abs().max()


def test_int8_rows_round_each_row_to_its_own_scale() -> None:
    weight = torch.tensor([[1.0, -0.5, 0.25], [0.0, 0.0, 0.0], [-254.0, 127.0, 3.0]])
    rows, scales = precision.int8_rows(weight)
    assert rows.dtype == torch.int8
    assert rows.tolist() == [[127, -64, 32], [0, 0, 0], [-127, 64, 2]]  # round half to even: 63.5 → 64, 1.5 → 2
    assert scales[0] == pytest.approx(1 / 127) and scales[2] == pytest.approx(2.0)
    assert scales[1] > 0  # an all-zero row must not divide by zero


def test_int8_logits_stay_close_to_the_embedding() -> None:
    torch.manual_seed(1)
    weight = torch.randn(1000, 64) / 8
    embedding = precision.Int8Embedding(weight, torch.float32, int8_logits=True)
    hidden = torch.randn(3, 64)
    exact = hidden @ weight.T
    logits = embedding.logits(hidden)
    assert logits.dtype == torch.float32
    assert (logits - exact).abs().max() <= 0.03 * exact.abs().max()
    assert logits.argmax(-1).tolist() == exact.argmax(-1).tolist()


SATURATING_PRODUCT = """
import torch
from daemon.engine import precision
print(precision.reduce_range())
# every pair of 8-bit products adds up past 16 bits: 2 × 255 × 127 > 32767
linear = precision.Int8Linear(*precision.int8_rows(torch.ones(1, 64)), None)
print(float(linear(torch.ones(1, 64))))
"""


@pytest.mark.skipif(not X86, reason="fbgemm's instruction sets are x86's")
@pytest.mark.parametrize(("instructions", "needs"), [("AVX2", None), ("AVX512", "avx512f"),
                                                      ("AVX512_E1", "avx512_vnni")])
def test_reduce_range_is_found_where_products_saturate(instructions: str, needs: str | None) -> None:
    """A CPU without VNNI adds pairs of 8-bit products in 16 bits, which saturate. The fault is real,
    not injected: fbgemm is told to use only the older instructions (FBGEMM_ENABLE_INSTRUCTIONS),
    as on such a CPU, in a process of its own."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    if needs and needs not in flags:
        pytest.skip(f"this CPU has no {needs}")
    result = subprocess.run([sys.executable, "-c", SATURATING_PRODUCT], cwd=REPO, capture_output=True, text=True,
                            env={"FBGEMM_ENABLE_INSTRUCTIONS": instructions, "PATH": "/usr/bin:/bin"}, timeout=120)
    assert result.returncode == 0, result.stderr
    reduce, product = result.stdout.split()
    assert reduce == str(instructions != "AVX512_E1")  # only VNNI (AVX512_E1) adds in 32 bits
    assert float(product) == pytest.approx(64, rel=0.02)  # right either way: 7-bit inputs cannot saturate


MS = {"fp32": 9.0, "bf16": 2.5, "fp16": float("inf")}


@pytest.mark.parametrize(("requested", "step", "device", "expected"), [
    ("auto", {"bf16": 0.10, "int8": 0.05}, "cpu", "int8+bf16"),  # VNNI: int8 steps are faster
    ("auto", {"bf16": 0.05, "int8": 0.10}, "cpu", "bf16"),  # no int8 gain: the half format alone
    ("auto", {"bf16": 0.05, "int8": float("inf")}, "cpu", "bf16"),  # a torch without int8 kernels
    ("int8", {"bf16": 0.05, "int8": 0.10}, "cpu", "int8+bf16"),  # asked for: kept, with the measured half
    ("int8", {}, "mps", "fp16"),  # int8 kernels are the CPU's
    ("fp32", {}, "cpu", "fp32"),
])
def test_auto_takes_an_int8_decoder_when_its_step_is_faster(monkeypatch: pytest.MonkeyPatch, requested: str,
                                                           step: dict[str, float], device: str, expected: str) -> None:
    """Timings are injected: other CPUs cannot be produced on this one."""
    monkeypatch.setattr(precision, "measure_cpu", lambda: {name: t / 1e3 for name, t in MS.items()})
    monkeypatch.setattr(precision, "measure_step", lambda weights: {name: t / 1e3 for name, t in step.items()})
    assert precision.choose(requested, device) == expected


def test_a_choice_names_the_decoder_and_the_rest() -> None:
    assert precision.formats("int8+bf16") == (True, "bf16")
    assert precision.formats("int8+fp32") == (True, "fp32")
    assert precision.formats("bf16") == (False, "bf16")


def test_the_step_probe_times_both_products() -> None:
    seconds = precision.measure_step("fp32")
    assert set(seconds) == {"fp32", "int8"}
    assert all(0 < s < 0.1 for s in seconds.values())  # a (5 × 2048 × 512) product: well under 100 ms
