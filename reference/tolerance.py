"""Tolerance policies, one per kind of technique: noise-relative (exact floating-point algorithms, FlashAttention's
rule: error <= k x the eager low-precision error against a float64 stick), exact (integer codes, greedy decoding),
quantization (bit-exact codes with counted exemptions, half-step bounds, SQNR) and distribution (G-test)."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from llmopt.reference.contract import PropertyFailed

K_NOISE = 2.0  # FlashAttention's factor over the eager low-precision error
# The rounding floor, in eps(dtype) x max|reference|. Half precision: the final rounding of the output (half an
# ulp); kernels accumulate in fp32, so the eager fp16/bf16 error dominates. float32: impl and eager compute at the
# same precision, so which one lands closer to the stick on a tiny case is a coin toss; 16 ulps (2e-6 relative)
# absorbs that and stays 500x tighter than tf32's error.
FLOOR_ULPS = {torch.float16: 0.5, torch.bfloat16: 0.5, torch.float32: 16.0, torch.float64: 16.0}


def _max_abs(x: torch.Tensor) -> float:
    return float(x.abs().max()) if x.numel() else 0.0


def max_error(approx: torch.Tensor, stick: torch.Tensor) -> float:
    """max |approx - stick| (both in float64 on the CPU) over the positions where the stick is finite; 0 for none."""
    stick = stick.detach().to("cpu", torch.float64)
    return _max_abs((approx.detach().to("cpu", torch.float64) - stick)[torch.isfinite(stick)])


def noise_relative(
    what: str,
    out: torch.Tensor,
    stick: torch.Tensor,
    eager: torch.Tensor,
    dtype: torch.dtype,
    *,
    eager_float32: Callable[[], torch.Tensor] | None = None,
    k: float = K_NOISE,
    magnitude: float | None = None,
) -> float:
    """Check `out` (impl, computed in `dtype`) against `stick` (the reference in float64), allowing
    k x max|eager - stick| + FLOOR_ULPS[dtype] x eps(dtype) x max|stick|, where `eager` is the reference computed
    eagerly in `dtype`. When the eager error is not finite, `eager_float32()` gives the bound instead: never infinite.
    Positions where the stick is finite must be finite. `magnitude` replaces max|stick| in the floor where rounding
    scales with more than the result: the terms of a sum that cancels (a gradient through a softmax over one key is
    exactly 0, its terms are not), or a conditioning factor. Returns margin = error / allowed; raises PropertyFailed."""
    if tuple(out.shape) != tuple(stick.shape):
        raise PropertyFailed(f"{what}: shape {tuple(out.shape)}, expected {tuple(stick.shape)}")
    if out.dtype != dtype:
        raise PropertyFailed(f"{what}: dtype {out.dtype}, expected {dtype}")
    out64, stick = out.detach().to("cpu", torch.float64), stick.detach().to("cpu", torch.float64)
    finite = torch.isfinite(stick)
    bad = finite & ~torch.isfinite(out64)
    if bad.any():
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise PropertyFailed(f"{what}: {int(bad.sum())} non-finite values where the reference is finite, "
                             f"first at {where}")
    if not torch.equal(finite, torch.isfinite(out64)) or (stick[~finite] != out64[~finite]).any():
        raise PropertyFailed(f"{what}: non-finite reference values are not reproduced")
    error = max_error(out64, stick)
    eager_error = max_error(eager, stick)
    if not math.isfinite(eager_error):
        if eager_float32 is None:
            raise ValueError(f"{what}: eager error is not finite and no float32 fallback was given")
        eager_error = max_error(eager_float32(), stick)
    magnitude = _max_abs(stick[finite]) if magnitude is None else magnitude
    allowed = k * eager_error + FLOOR_ULPS[dtype] * torch.finfo(dtype).eps * magnitude
    if not math.isfinite(allowed):
        raise ValueError(f"{what}: the bound is not finite (eager error {eager_error}, magnitude {magnitude})")
    margin = error / allowed if allowed > 0 else (0.0 if error == 0 else math.inf)
    if margin > 1:
        where = _argmax_index(out64 - stick, finite)
        raise PropertyFailed(
            f"{what}: max |impl - float64 reference| = {error:.3e} at {where} exceeds allowed {allowed:.3e} "
            f"({k:g} x eager {dtype} error {eager_error:.3e} + {FLOOR_ULPS[dtype]:g} eps x |out| {magnitude:.3e}); "
            f"margin {margin:.3g}"
        )
    return margin


def _argmax_index(diff: torch.Tensor, finite: torch.Tensor) -> tuple[int, ...]:
    flat = int(torch.where(finite, diff.abs(), torch.zeros_like(diff)).flatten().argmax())
    index = []
    for size in reversed(diff.shape):
        index.append(flat % size)
        flat //= size
    return tuple(reversed(index))


def exact(what: str, out: torch.Tensor, expected: torch.Tensor) -> None:
    """Bitwise equality (shape, dtype and every value; NaNs must match position)."""
    if tuple(out.shape) != tuple(expected.shape) or out.dtype != expected.dtype:
        raise PropertyFailed(f"{what}: got {tuple(out.shape)} {out.dtype}, "
                             f"expected {tuple(expected.shape)} {expected.dtype}")
    out, expected = out.detach().cpu(), expected.detach().cpu()
    same = (out == expected) | (out.isnan() & expected.isnan()) if out.is_floating_point() else out == expected
    if not bool(same.all()):
        first = tuple(int(i) for i in (~same).nonzero()[0])
        raise PropertyFailed(
            f"{what}: {int((~same).sum())} of {same.numel()} values differ, first at {first}: "
            f"{out[first].item()!r} vs {expected[first].item()!r}"
        )


def same_twice(run) -> None:
    """Two calls of `run` (no arguments, a tensor back) are bitwise equal. The first output is copied before the
    second call: an impl that returns one buffer every call would otherwise be compared with itself."""
    first = run().detach().clone()
    exact("second call vs first call", run(), first)


def unchanged_later(output: torch.Tensor):
    """A check to run after later calls of an impl: `output`, returned by an earlier call, still holds what it holds
    now (an impl that writes every call into one buffer fails it)."""
    kept = output.detach().clone()
    return lambda: exact("an earlier call's output after later calls (an output buffer reused across calls)", output,
                         kept)


def buffers_unchanged_later(tensors: list[tuple[str, torch.Tensor]], when: str = "after the call"):
    """A check to run after a call: the whole buffer each named tensor views (the tensor itself when it is not a
    view) still holds bit for bit what it holds now (a call or a backward writing into its inputs fails it)."""
    kept = [(name, buffer, buffer.detach().clone())
            for name, buffer in ((name, t._base if t._base is not None else t) for name, t in tensors)]

    def check():
        for name, buffer, before in kept:
            exact(f"{name} (and the buffer it views) {when}", buffer, before)

    return check


def bit_exact_except(what: str, out: torch.Tensor, expected: torch.Tensor, exempt: torch.Tensor) -> int:
    """Bitwise equality outside `exempt` (values within a few ulps of a decision threshold, where two correct
    builds may round differently). Returns how many exempt positions differ, for the report."""
    differ = out.detach().cpu() != expected.detach().cpu()
    unexplained = differ & ~exempt.cpu()
    if unexplained.any():
        first = tuple(int(i) for i in unexplained.nonzero()[0])
        raise PropertyFailed(
            f"{what}: {int(unexplained.sum())} values differ away from any decision threshold, first at {first}: "
            f"{out[first].item()!r} vs {expected[first].item()!r}"
        )
    return int((differ & exempt.cpu()).sum())


def within_half_step(what: str, x: torch.Tensor, dequantized: torch.Tensor, step: torch.Tensor) -> float:
    """|x - dq(q(x))| <= step / 2 (+ float32 rounding of the step), elementwise; returns the worst ratio."""
    error = (x.double() - dequantized.double()).abs()
    allowed = step.double() / 2 * (1 + 1e-6) + 1e-30
    ratio = float((error / allowed).max())
    if ratio > 1:
        raise PropertyFailed(f"{what}: quantization error reaches {ratio:.3f} x half a step")
    return ratio


def sqnr_db(x: torch.Tensor, dequantized: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB."""
    noise = float(((x.double() - dequantized.double()) ** 2).sum())
    signal = float((x.double() ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def chi2_sf(statistic: float, dof: int) -> float:
    """Survival function of the chi-square distribution (regularized upper incomplete gamma)."""
    if dof <= 0:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(statistic / 2, dtype=torch.float64)))


def g_test(what: str, observed: torch.Tensor, expected_probs: torch.Tensor, alpha: float, *,
           min_expected: float = 5.0) -> float:
    """Goodness of fit of counts `observed` to `expected_probs` (G-test, outcomes with fewer than `min_expected`
    expected counts pooled into one bin; an observation where the probability is 0 fails at once). Raises
    PropertyFailed when p < alpha; returns the p-value. The false-failure rate is alpha."""
    observed = observed.to(torch.float64).flatten()
    probs = expected_probs.to(torch.float64).flatten()
    if observed.shape != probs.shape:
        raise ValueError(f"{what}: {observed.numel()} counts for {probs.numel()} outcomes")
    if not torch.isclose(probs.sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-9):
        raise ValueError(f"{what}: expected probabilities sum to {float(probs.sum())}, not 1")
    total = float(observed.sum())
    impossible = (probs == 0) & (observed > 0)
    if impossible.any():
        raise PropertyFailed(f"{what}: {int(observed[impossible].sum())} draws of outcomes with probability 0, "
                             f"first outcome {int(impossible.nonzero()[0])}")
    expected = probs * total
    small = expected < min_expected
    obs = torch.cat([observed[~small], observed[small].sum().reshape(1)])
    exp = torch.cat([expected[~small], expected[small].sum().reshape(1)])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    statistic = 2 * float(torch.where(obs > 0, obs * torch.log(obs / exp), torch.zeros_like(obs)).sum())
    p = chi2_sf(statistic, int(keep.sum()) - 1)
    if p < alpha:
        raise PropertyFailed(f"{what}: G = {statistic:.1f} on {int(keep.sum()) - 1} dof, "
                             f"p = {p:.2e} < alpha = {alpha:.1e} "
                             f"({int(total)} draws)")
    return p
