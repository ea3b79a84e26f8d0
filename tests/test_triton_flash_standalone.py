"""Quick check of the Triton FlashAttention kernels (forward and backward) against a float64 PyTorch attention:
odd lengths, N > M and N < M, causal, windows, GQA/MQA, padded head dims, fp32/fp16, strided inputs, empty rows.
Runs under the Triton interpreter (TRITON_INTERPRET=1) when there is no CUDA device."""
import importlib.util
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported
pytest.importorskip("triton")

try:
    from llmopt.impls.attention import _triton_flash_kernels as kernels
except ImportError:  # the package is not installed yet: load the file itself
    _path = Path(__file__).resolve().parents[1] / "impls" / "attention" / "_triton_flash_kernels.py"
    _spec = importlib.util.spec_from_file_location("_triton_flash_kernels", _path)
    kernels = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(kernels)

# Triton 3.6's interpreter turns loop bounds into ints through a deprecated NumPy conversion; not our code.
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 5e-2}  # x max(1, max|reference|)


def naive_attention(q, k, v, *, causal, scale, window):
    """float64 reference. q (B, Hq, N, D), k/v (B, Hkv, M, D) -> (B, Hq, N, D); rows with no key are 0."""
    Hq, N, M = q.shape[1], q.shape[2], k.shape[2]
    k = k.repeat_interleave(Hq // k.shape[1], dim=1)  # (B, Hq, M, D)
    v = v.repeat_interleave(Hq // v.shape[1], dim=1)
    i = torch.arange(N).unsqueeze(1)  # (N, 1)
    j = torch.arange(M).unsqueeze(0)  # (1, M)
    diagonal = i + M - N
    keep = torch.ones(N, M, dtype=torch.bool)
    if causal:
        keep &= j <= diagonal
    if window[0] >= 0:
        keep &= j >= diagonal - window[0]
    if window[1] >= 0:
        keep &= j <= diagonal + window[1]
    keep = keep.to(q.device)
    has_key = keep.any(dim=1, keepdim=True)  # (N, 1)
    scores = (q @ k.transpose(-1, -2)) * scale  # (B, Hq, N, M)
    scores = scores.masked_fill(~keep, float("-inf")).masked_fill(~has_key, 0.0)  # empty rows: finite softmax
    probs = torch.softmax(scores, dim=-1) * keep  # empty rows -> 0, with zero gradient
    return probs @ v


def make_inputs(B, Hq, Hkv, N, M, D, dtype, strided, seed=0):
    """q (B, Hq, N, D), k/v (B, Hkv, M, D); `strided`: views of (B, L, H, 2D) buffers (transposed, sliced)."""
    generator = torch.Generator().manual_seed(seed)

    def tensor(H, L):
        if strided:
            buffer = torch.randn(B, L, H, 2 * D, generator=generator)  # (B, L, H, 2D)
            return buffer.to(DEVICE, dtype)[..., D:].transpose(1, 2)  # (B, H, L, D), non-contiguous
        return torch.randn(B, H, L, D, generator=generator).to(DEVICE, dtype)

    return tensor(Hq, N), tensor(Hkv, M), tensor(Hkv, M)


def assert_close(name, actual, expected, dtype):
    error = (actual.double() - expected).abs().max().item()
    allowed = TOLERANCE[dtype] * max(1.0, expected.abs().max().item())
    assert error <= allowed, f"{name}: max error {error:.3g} > {allowed:.3g}"


CASES = {  # (B, Hq, Hkv, N, M, D, causal, window, dtype, strided)
    "n1_m17": (1, 2, 2, 1, 17, 32, False, (-1, -1), torch.float32, False),
    "n17_m1_causal_empty_rows": (1, 2, 2, 17, 1, 32, True, (-1, -1), torch.float32, False),
    "n97_m33_causal_gqa_d40": (1, 4, 2, 97, 33, 40, True, (-1, -1), torch.float32, False),
    "n33_m97_causal_mqa_d80_fp16": (1, 4, 1, 33, 97, 80, True, (-1, -1), torch.float16, False),
    "n97_window_both_sides_d64": (1, 2, 2, 97, 97, 64, False, (8, 4), torch.float32, False),
    "n33_m97_causal_window_left_fp16": (2, 2, 2, 33, 97, 32, True, (16, -1), torch.float16, False),
    "n33_m17_causal_window00_empty_rows": (1, 2, 2, 33, 17, 32, True, (0, 0), torch.float32, False),
    "strided_gqa_window_right_d40": (2, 4, 2, 17, 33, 40, False, (-1, 5), torch.float32, True),
    "n64_full_tiles_fp16": (1, 2, 2, 64, 64, 64, False, (-1, -1), torch.float16, False),
    "n97_m17_window_left_only": (1, 2, 1, 97, 17, 32, False, (4, -1), torch.float32, False),
    "bf16_causal": (1, 2, 2, 33, 33, 64, True, (-1, -1), torch.bfloat16, False),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_forward_and_backward_match_float64(case):
    B, Hq, Hkv, N, M, D, causal, window, dtype, strided = case
    if dtype == torch.bfloat16 and DEVICE == "cpu":
        pytest.skip("the Triton interpreter has no bfloat16")
    q, k, v = make_inputs(B, Hq, Hkv, N, M, D, dtype, strided)
    originals = [x.clone() for x in (q, k, v)]
    inputs = [x.requires_grad_() for x in (q, k, v)]
    out = kernels.flash_attention(*inputs, causal=causal, window=window)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE, dtype)
    grads = torch.autograd.grad(out, inputs, grad_out)

    inputs64 = [x.detach().double().requires_grad_() for x in (q, k, v)]
    expected = naive_attention(*inputs64, causal=causal, scale=D**-0.5, window=window)
    expected_grads = torch.autograd.grad(expected, inputs64, grad_out.double())

    assert out.dtype == dtype and out.shape == (B, Hq, N, D)
    assert all(torch.equal(x.detach(), original) for x, original in zip((q, k, v), originals)), "input mutated"
    assert_close("out", out, expected, dtype)
    for name, grad, expected_grad in zip(("dq", "dk", "dv"), grads, expected_grads):
        assert grad.shape == expected_grad.shape
        assert_close(name, grad, expected_grad, dtype)


def test_rows_without_keys_are_exact_zeros():
    # causal + window (0, 0) with N > M: query i sees only key i + M - N, none when i < N - M
    q, k, v = make_inputs(1, 2, 2, 33, 17, 32, torch.float32, strided=False)
    inputs = [x.requires_grad_() for x in (q, k, v)]
    out = kernels.flash_attention(*inputs, causal=True, window=(0, 0))
    dq, _, _ = torch.autograd.grad(out, inputs, torch.ones_like(out))
    assert torch.equal(out[:, :, :16], torch.zeros_like(out[:, :, :16]))
    assert torch.equal(dq[:, :, :16], torch.zeros_like(dq[:, :, :16]))
    assert torch.isfinite(out).all() and torch.isfinite(dq).all()


def test_forward_is_deterministic():
    q, k, v = make_inputs(1, 4, 2, 33, 47, 40, torch.float32, strided=True)
    first = kernels.flash_attention(q, k, v, causal=True, window=(9, -1))
    second = kernels.flash_attention(q, k, v, causal=True, window=(9, -1))
    assert torch.equal(first, second)


def test_pinned_tile_is_used_and_matches():
    q, k, v = make_inputs(1, 2, 2, 40, 40, 32, torch.float32, strided=False)
    expected = naive_attention(q.double(), k.double(), v.double(), causal=True, scale=0.3, window=(-1, -1))
    kernels.pin_config("forward", kernels.TileConfig(16, 16, 4, 1))
    try:
        out = kernels.flash_attention(q, k, v, causal=True, scale=0.3)
    finally:
        kernels.pin_config("forward", None)
    assert_close("out", out, expected, torch.float32)
