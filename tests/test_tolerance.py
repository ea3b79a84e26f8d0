"""The tolerance policies themselves can fail: zero, constant and NaN outputs never pass the noise-relative check,
the bound never becomes infinite, exact comparison sees one changed bit, and the G-test rejects a biased sampler while
accepting a fair one."""
import math

import pytest
import torch
from llmopt.reference.contract import PropertyFailed
from llmopt.reference.tolerance import chi2_sf, exact, g_test, noise_relative


def _stick_and_eager(dtype=torch.float16):
    stick = torch.randn(64, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return stick, stick.to(dtype)


def test_exact_low_precision_copy_passes_with_margin_below_one():
    stick, eager = _stick_and_eager()
    assert noise_relative("out", eager, stick, eager, torch.float16) <= 0.5


@pytest.mark.parametrize("wrong", ["zeros", "constant", "nan", "scaled"])
def test_wrong_outputs_never_pass(wrong):
    stick, eager = _stick_and_eager()
    out = {"zeros": torch.zeros_like(eager), "constant": torch.full_like(eager, float(stick.mean())),
           "nan": eager.clone().index_fill_(0, torch.tensor([3]), float("nan")), "scaled": eager * 1.01}[wrong]
    with pytest.raises(PropertyFailed):
        noise_relative("out", out, stick, eager, torch.float16)


def test_non_finite_eager_error_falls_back_to_float32():
    stick, eager = _stick_and_eager()
    overflowed = eager.clone()
    overflowed[0, 0] = float("inf")
    assert noise_relative("out", eager, stick, overflowed, torch.float16, eager_float32=lambda: stick.float()) <= 1
    with pytest.raises(ValueError):
        noise_relative("out", eager, stick, overflowed, torch.float16)


def test_shape_and_dtype_are_checked():
    stick, eager = _stick_and_eager()
    with pytest.raises(PropertyFailed, match="shape"):
        noise_relative("out", eager[:-1], stick, eager, torch.float16)
    with pytest.raises(PropertyFailed, match="dtype"):
        noise_relative("out", eager.float(), stick, eager, torch.float16)


def test_exact_sees_one_bit():
    x = torch.randn(100)
    y = x.clone()
    y[17] = torch.nextafter(y[17], torch.tensor(math.inf))
    exact("same", x, x.clone())
    with pytest.raises(PropertyFailed, match="1 of 100"):
        exact("one ulp", y, x)


def test_chi2_survival_matches_known_values():
    assert chi2_sf(3.841458820694124, 1) == pytest.approx(0.05, rel=1e-9)
    assert chi2_sf(18.307038053275146, 10) == pytest.approx(0.05, rel=1e-9)


def test_g_test_accepts_fair_and_rejects_biased_sampling():
    probs = torch.tensor([0.5, 0.25, 0.125, 0.125], dtype=torch.float64)
    for seed in range(10):
        draws = torch.multinomial(probs, 100_000, replacement=True, generator=torch.Generator().manual_seed(seed))
        g_test("fair", torch.bincount(draws, minlength=4), probs, alpha=1e-6)
    biased = torch.tensor([0.49, 0.26, 0.125, 0.125], dtype=torch.float64)
    draws = torch.multinomial(biased, 100_000, replacement=True, generator=torch.Generator().manual_seed(0))
    with pytest.raises(PropertyFailed):
        g_test("biased", torch.bincount(draws, minlength=4), probs, alpha=1e-6)
    with pytest.raises(PropertyFailed, match="probability 0"):
        g_test("impossible", torch.tensor([5, 0, 0, 1]), torch.tensor([1.0, 0, 0, 0]), alpha=1e-6)
