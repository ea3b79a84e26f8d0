"""Exact attention softmax(Q K^T * scale + mask) V: the naive form and the online-softmax tiled form of
FlashAttention (seed section 5.1; Dao et al. 2022, 2023), with GQA/MQA head sharing, bottom-right causal masking
and sliding windows. The contract every attention impl is held to."""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import torch
from llmopt.reference import tolerance
from llmopt.reference.contract import (
    Call,
    Claim,
    Contract,
    Cost,
    Goal,
    Property,
    PropertyFailed,
    copy_inputs_in_place,
    drawing,
    dtype_of,
)

# --------------------------------------------------------------------------------------------------- the reference


def visible(N: int, M: int, *, causal: bool, window: tuple[int, int], device="cpu") -> torch.Tensor:
    """(N, M) bool: query i sees key j. Causal is aligned bottom-right (j <= i + M - N); window (left, right) keeps
    j in [i + M - N - left, i + M - N + right], -1 meaning unbounded."""
    i = torch.arange(N, device=device).unsqueeze(1)  # (N, 1)
    j = torch.arange(M, device=device).unsqueeze(0)  # (1, M)
    diagonal = i + M - N  # (N, 1): the key aligned with query i
    keep = torch.ones(N, M, dtype=torch.bool, device=device)
    left, right = window
    if causal:
        keep &= j <= diagonal
    if left >= 0:
        keep &= j >= diagonal - left
    if right >= 0:
        keep &= j <= diagonal + right
    return keep


def _expand_kv(k: torch.Tensor, Hq: int) -> torch.Tensor:
    """(B, Hkv, M, D) -> (B, Hq, M, D): query head h reads KV head h // (Hq // Hkv)."""
    return k.repeat_interleave(Hq // k.shape[1], dim=1)


def attention(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    """Naive attention. q: (B, Hq, N, D); k, v: (B, Hkv, M, D) -> (B, Hq, N, D), computed in q's dtype.
    A query row with no visible key is zero."""
    _, Hq, N, D = q.shape
    M = k.shape[2]
    scale = D**-0.5 if scale is None else scale
    k, v = _expand_kv(k, Hq), _expand_kv(v, Hq)  # (B, Hq, M, D)
    scores = (q @ k.transpose(-1, -2)) * scale  # (B, Hq, N, M)
    keep = visible(N, M, causal=causal, window=tuple(window), device=q.device)  # (N, M)
    scores = scores.masked_fill(~keep, float("-inf"))
    probs = torch.softmax(scores, dim=-1).masked_fill(~keep, 0.0)  # empty rows: NaN -> 0
    return probs @ v


def attention_tiled(q, k, v, *, causal=False, scale=None, window=(-1, -1), block_m=16, block_n=16):
    """The online-softmax tiled form (seed 5.1): for each block of queries, walk key blocks keeping the running
    max m, running sum l and unnormalised output O, rescaling both by exp(m_old - m_new) when the max grows;
    divide by l at the end. Same shapes and semantics as `attention`."""
    B, Hq, N, D = q.shape
    M = k.shape[2]
    scale = D**-0.5 if scale is None else scale
    k, v = _expand_kv(k, Hq), _expand_kv(v, Hq)
    keep = visible(N, M, causal=causal, window=tuple(window), device=q.device)
    out = torch.zeros_like(q)
    for m0 in range(0, N, block_m):
        qb = q[:, :, m0:m0 + block_m]  # (B, Hq, bm, D)
        rows = qb.shape[2]
        m = torch.full((B, Hq, rows, 1), float("-inf"), dtype=q.dtype, device=q.device)
        row_sum = torch.zeros((B, Hq, rows, 1), dtype=q.dtype, device=q.device)
        acc = torch.zeros((B, Hq, rows, D), dtype=q.dtype, device=q.device)
        for n0 in range(0, M, block_n):
            s = (qb @ k[:, :, n0:n0 + block_n].transpose(-1, -2)) * scale  # (B, Hq, bm, bn)
            s = s.masked_fill(~keep[m0:m0 + block_m, n0:n0 + block_n], float("-inf"))
            m_block = s.amax(dim=-1, keepdim=True)
            m_new = torch.maximum(m, m_block)
            m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # no key seen yet
            p = torch.exp(s - m_safe)  # (B, Hq, bm, bn)
            rescale = torch.exp(m - m_safe)
            row_sum = rescale * row_sum + p.sum(dim=-1, keepdim=True)
            acc = rescale * acc + p @ v[:, :, n0:n0 + block_n]
            m = m_new
        seen = row_sum > 0
        out[:, :, m0:m0 + block_m] = torch.where(seen, acc / torch.where(seen, row_sum, torch.ones_like(row_sum)), 0.0)
    return out


# --------------------------------------------------------------------------------------------------- the signature


def check_qkv(call: Call) -> None:
    """ValueError naming the expected layout unless the call is attn(q, k, v, *, causal, scale, window) with
    q (B, Hq, N, D), k and v (B, Hkv, M, D), Hq % Hkv == 0, one floating dtype and one device, and scale None or
    >= 0 (0: every visible key weighs alike)."""
    if len(call.args) != 3:
        raise ValueError(f"attention takes (q, k, v), got {len(call.args)} positional arguments")
    unknown = set(call.kwargs) - {"causal", "scale", "window"}
    if unknown:
        raise ValueError(f"attention takes keywords causal, scale, window; got {sorted(unknown)}")
    q, k, v = call.args
    layout = "q (B, Hq, N, D), k and v (B, Hkv, M, D) with Hq % Hkv == 0"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor: expected {layout}; got {getattr(t, 'shape', type(t))}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {t.dtype}")
        if 0 in t.shape:
            raise ValueError(f"{name} has an empty dimension {tuple(t.shape)}: expected {layout} with all sizes >= 1")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape (B, Hkv, M, D), got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(f"batch and head dim must match: expected {layout}; "
                         f"got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"Hq = {q.shape[1]} is not a multiple of Hkv = {k.shape[1]}: expected {layout}")
    window = call.kwargs.get("window", (-1, -1))
    if not (isinstance(window, (tuple, list)) and len(window) == 2
            and all(isinstance(w, int) and w >= -1 for w in window)):
        raise ValueError(f"window must be (left, right) ints >= -1 (-1 unbounded), got {window!r}")
    scale = call.kwargs.get("scale")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale >= 0):
        # fused kernels take the row max of the unscaled scores: a negative scale would make it the row min
        raise ValueError(f"scale must be a finite number >= 0 or None (D ** -0.5), got {scale!r}")
    if not isinstance(call.kwargs.get("causal", False), bool):
        # TRY004: the contract's errors are ValueErrors
        raise ValueError(f"causal must be a bool, got {call.kwargs['causal']!r}")  # noqa: TRY004


# --------------------------------------------------------------------------------------------------- the cases

# A case's layout -> the layouts of q, k, v and the output gradient. padded_view: a view into a NaN-poisoned larger
# buffer; bnhd: (B, L, H, D) memory seen as (B, H, L, D); mixed: each its own, as a fused QKV projection, a KV cache
# and the layer above hand them over (an impl must read each with its own strides).
TENSOR_LAYOUTS = {
    "contiguous": ("contiguous",) * 4,
    "padded_view": ("padded_view",) * 4,
    "bnhd": ("bnhd",) * 4,
    "mixed": ("bnhd", "padded_view", "contiguous", "padded_view"),
}
LAYOUTS = tuple(TENSOR_LAYOUTS)


@dataclass(frozen=True)
class AttentionCase:
    B: int
    Hq: int
    Hkv: int
    N: int
    M: int
    D: int
    causal: bool = False
    window: tuple = (-1, -1)
    scale: float | None = None
    dtype: str = "float32"
    value_scale: float = 1.0
    layout: str = "contiguous"
    seed: int = 0

    @property
    def empty_rows(self) -> int:
        return int((~visible(self.N, self.M, causal=self.causal, window=self.window).any(dim=1)).sum())


def features(case: AttentionCase) -> set[str]:
    needs = set()
    if case.causal:
        needs.add("causal")
        if case.N != case.M:
            needs.add("causal_n_ne_m")
    if case.window != (-1, -1):
        needs.add("window")
    if case.Hq != case.Hkv:
        needs.add("gqa")
    if case.scale is not None:
        needs.add("scale")
    if case.layout != "contiguous":
        needs.add("strided")
    if case.empty_rows:
        needs.add("empty_rows")
    return needs


FEATURES = ("causal", "causal_n_ne_m", "window", "gqa", "scale", "strided", "empty_rows", "backward")


def _place(data: torch.Tensor, layout: str, dtype: torch.dtype) -> torch.Tensor:
    """data (B, H, L, D) in `dtype` on its device, laid out as `layout` (one of TENSOR_LAYOUTS' entries)."""
    if layout == "contiguous":
        return data.to(dtype)
    if layout == "bnhd":
        return data.transpose(1, 2).contiguous().to(dtype).transpose(1, 2)
    B, H, L, D = data.shape
    buffer = torch.full((B, H + 1, L + 3, D + 8), float("nan"), dtype=dtype, device=data.device)
    buffer[:, 1:, 2:L + 2, 4:D + 4] = data.to(dtype)
    return buffer[:, 1:, 2:L + 2, 4:D + 4]


def make_call(case: AttentionCase, device: str) -> Call:
    """Inputs of a case: standard normal q, k, v (q times value_scale) in the case's dtype and layouts, drawn on
    `device` from the case's seed (the same case gives the same inputs on one device)."""
    gen = torch.Generator(device=device).manual_seed(case.seed)

    def tensor(H, L, layout, stretch=1.0):
        data = torch.randn(case.B, H, L, case.D, generator=gen, dtype=torch.float64, device=device) * stretch
        return _place(data, layout, dtype_of(case.dtype))

    q_layout, k_layout, v_layout, _ = TENSOR_LAYOUTS[case.layout]
    q = tensor(case.Hq, case.N, q_layout, case.value_scale)
    k, v = tensor(case.Hkv, case.M, k_layout), tensor(case.Hkv, case.M, v_layout)
    return Call((q, k, v), {"causal": case.causal, "scale": case.scale, "window": tuple(case.window)})


def cases(impl, mode: str):
    """Hypothesis strategy of AttentionCase, drawing only features the impl supports. `mode` is "cpu", "cuda" or
    "interpret" (tiny sizes, no bfloat16)."""
    from hypothesis import strategies as st

    on, small, dtypes = drawing(impl, mode)
    lengths = [1, 2, 3, 16, 17, 31, 33, 64, 97] + ([] if small else [128, 255, 1025])
    head_dims = [32, 40, 64] + ([] if small else [8, 16, 80, 96, 128, 256])

    @st.composite
    def build(draw):
        Hkv = draw(st.sampled_from([1, 2, 3]))
        group = draw(st.sampled_from([1, 2, 3, 4] if on("gqa") else [1]))  # 3: h // group is not a shift
        N, M = draw(st.sampled_from(lengths)), draw(st.sampled_from(lengths))
        big = N * M >= 128 * 255
        causal = draw(st.booleans()) if on("causal") else False
        if causal and not on("causal_n_ne_m"):
            M = N
        bounds = st.sampled_from([-1, -1, 0, 1, 7, 40])
        window = (draw(bounds), draw(bounds)) if on("window") else (-1, -1)
        case = AttentionCase(
            B=1 if big else draw(st.sampled_from([1, 2])),
            Hq=Hkv * group,
            Hkv=Hkv,
            N=N,
            M=M,
            D=draw(st.sampled_from(head_dims)),
            causal=causal,
            window=window,
            scale=draw(st.sampled_from([None, None, 0.05, 0.3, 0.0])) if on("scale") else None,  # 0: mean of v
            dtype=draw(st.sampled_from(dtypes)),
            # 0.1: near-uniform, long sums; 32: scores past float32 exp's range (88.7), only a max-shifted softmax holds
            value_scale=draw(st.sampled_from([1.0, 1.0, 8.0, 0.1, 32.0])),
            layout=draw(st.sampled_from(LAYOUTS if on("strided") else ("contiguous",))),
            seed=draw(st.integers(0, 2**16)),
        )
        return case

    return build().filter(lambda case: CONTRACT.unsupported(case, impl.supports) is None)


# The regression grid run before hypothesis explores (odd sizes, GQA, N != M, masks, fp16 long rows), as
# flash-attention's own test grid does.
EXAMPLES = [
    AttentionCase(2, 4, 2, 97, 255, 40, causal=True, dtype="float16", seed=1),
    AttentionCase(1, 6, 3, 255, 97, 64, causal=True, layout="padded_view", seed=2),
    AttentionCase(1, 4, 1, 33, 1025, 64, dtype="float16", value_scale=0.1, seed=3),
    AttentionCase(2, 2, 2, 64, 64, 32, causal=True, window=(7, 0), dtype="float16", seed=4),
    AttentionCase(1, 4, 2, 17, 97, 80, window=(1, 7), scale=0.3, layout="bnhd", seed=5),
    AttentionCase(1, 2, 1, 97, 33, 96, causal=True, window=(0, 0), value_scale=8.0, seed=6),
    AttentionCase(1, 4, 4, 128, 128, 32, dtype="bfloat16", value_scale=8.0, seed=7),
    # q a (B, N, H, D) view, k a padded view, v contiguous, the output gradient padded; groups of 3; head dim 256
    AttentionCase(1, 6, 2, 33, 97, 256, dtype="float16", layout="mixed", seed=8),
    # scores up to 116: exp overflows float32 (past 88.7) unless the row max is subtracted
    AttentionCase(1, 3, 1, 17, 40, 64, dtype="float16", value_scale=32.0, seed=9),
]


def examples(mode: str) -> list[AttentionCase]:
    """The grid; under Triton's interpreter only its smaller cases (no bfloat16 there)."""
    if mode != "interpret":
        return EXAMPLES
    return [c for c in EXAMPLES if c.N * c.M <= 97 * 255 and c.D <= 80 and c.dtype != "bfloat16"]


# --------------------------------------------------------------------------------------------------- the properties


class _Oracle:
    """The float64 stick and the eager low-precision reference of a case (and their gradients), cached. The oldest
    entries go once the cache holds more than `max_bytes` of tensors (the newest always stays): a few large cases
    take as much as many small ones."""

    def __init__(self, max_bytes: int = 1 << 29):
        self.max_bytes, self.store, self.held = max_bytes, {}, 0  # key -> (entry, bytes); bytes held in all

    def __call__(self, case: AttentionCase, device: str, want_grads: bool):
        key = (case, device, want_grads)
        if key not in self.store:
            stick = _reference_run(case, device, "float64", want_grads)
            eager = stick if case.dtype == "float64" else _reference_run(case, device, case.dtype, want_grads)
            size = sum(t.nbytes for out, grads in ([stick] if eager is stick else [stick, eager])
                       for t in (out, *(grads or ())))
            self.store[key], self.held = ((stick, eager), size), self.held + size
            while self.held > self.max_bytes and len(self.store) > 1:
                self.held -= self.store.pop(next(iter(self.store)))[1]
        return self.store[key][0]


def _reference_run(case: AttentionCase, device: str, precision: str, want_grads: bool):
    call = make_call(case, device)
    q, k, v = (t.detach().to(dtype_of(precision)).requires_grad_(want_grads) for t in call.args)
    out = attention(q, k, v, **call.kwargs)
    if not want_grads:
        return out.detach(), None
    grads = torch.autograd.grad(out, (q, k, v), _dout(case, device, out.dtype))
    return out.detach(), grads


def _dout(case: AttentionCase, device: str, dtype: torch.dtype) -> torch.Tensor:
    """The output gradient (B, Hq, N, D) of a case, standard normal, in `dtype` and the case's layout for it."""
    gen = torch.Generator(device=device).manual_seed(case.seed + 7919)
    data = torch.randn(case.B, case.Hq, case.N, case.D, generator=gen, dtype=torch.float64, device=device)
    return _place(data, TENSOR_LAYOUTS[case.layout][3], dtype)


ORACLE = _Oracle()


def _call_impl(impl, case: AttentionCase, device: str, requires_grad: bool = False):
    call = make_call(case, device)
    if requires_grad:
        call = Call(tuple(t.requires_grad_(True) for t in call.args), call.kwargs)
    check_qkv(call)
    return call, impl.fn(*call.args, **call.kwargs)


def _eager32(case, device):
    return lambda: _reference_run(dataclasses.replace(case, dtype="float32"), device, "float32", False)[0]


@functools.lru_cache(maxsize=32)
def score_conditioning(case: AttentionCase, device: str) -> float:
    """max(1, max |scale q.k|) over visible pairs: softmax turns an absolute error e in a score into a relative error
    e in its probability, and a score s is stored with an error of eps |s|, so the rounding floor scales with it."""
    q, k, _ = (t.to(torch.float64) for t in make_call(case, device).args)
    scale = case.scale if case.scale is not None else case.D**-0.5
    scores = (q @ _expand_kv(k, case.Hq).transpose(-1, -2) * scale).abs()  # (B, Hq, N, M)
    keep = visible(case.N, case.M, causal=case.causal, window=case.window, device=q.device)
    return max(1.0, float(scores.masked_fill(~keep, 0.0).max()))


def _out_margin(what: str, out: torch.Tensor, case: AttentionCase, device: str, want_grads: bool = False) -> float:
    """noise_relative of an impl's output `out` (B, Hq, N, D) for the inputs of `case`; `want_grads` picks the oracle
    entry that holds the gradients too (one reference run where the caller needs both)."""
    (stick, _), (eager, _) = ORACLE(case, device, want_grads)
    magnitude = float(stick.abs().max()) * score_conditioning(case, device)
    return tolerance.noise_relative(what, out, stick, eager, dtype_of(case.dtype),
                                    eager_float32=_eager32(case, device), magnitude=magnitude)


def matches_reference(impl, case, device):
    return _out_margin("out", _call_impl(impl, case, device)[1], case, device)


def _has_backward(impl, case) -> bool:
    return impl.supports.get("backward", True) is not False and case.dtype != "float64"


def grads_match_reference(impl, case, device):
    """The forward run with inputs that require grad (its output as matches_reference's), then dq, dk, dv for the
    case's output gradient (in the case's layout for it, which the backward must leave as it was)."""
    call, out = _call_impl(impl, case, device, requires_grad=True)
    if out.grad_fn is None:
        if impl.kind == "user":  # a forward-only user kernel: nothing to check, said in the report
            return None
        raise PropertyFailed("impl declares a backward but its output carries no autograd graph")
    margins = [_out_margin("out of the forward run with inputs that require grad", out, case, device, True)]
    dout = _dout(case, device, out.dtype)
    dout_unchanged = tolerance.buffers_unchanged_later(
        [("the output gradient", dout)], "after backward (in a model it also flows down the residual)")
    grads = torch.autograd.grad(out, call.args, dout, allow_unused=True)
    dout_unchanged()
    (_, stick), (_, eager) = ORACLE(case, device, True)
    conditioning = score_conditioning(case, device)
    scales = [term * conditioning for term in _gradient_term_scales(case, device)]
    for name, grad, g64, geager, index in zip(("dq", "dk", "dv"), grads, stick, eager, range(3)):
        if grad is None:
            raise PropertyFailed(f"{name} is None: the output does not depend on input {index}")

        def grad32(index=index):
            return _reference_grads_f32(case, device)[index]

        margins.append(tolerance.noise_relative(name, grad, g64, geager, dtype_of(case.dtype), eager_float32=grad32,
                                                magnitude=scales[index]))
    return max(margins)


@functools.lru_cache(maxsize=32)
def _gradient_term_scales(case: AttentionCase, device: str) -> tuple[float, float, float]:
    """The largest magnitude of the terms each of dq, dk, dv sums (float64), for the rounding floor: with
    dS = P * (dO V^T - delta), dq = scale dS K and dk = scale dS^T Q cancel (exactly 0 where a row sees one key)
    while their terms do not; |terms| = scale P (|dO| |V|^T + |delta|) |K| and the like."""
    q, k, v = (t.to(torch.float64) for t in make_call(case, device).args)
    dout = _dout(case, device, torch.float64)
    Hq, scale = q.shape[1], case.scale if case.scale is not None else case.D**-0.5
    k, v = _expand_kv(k, Hq), _expand_kv(v, Hq)
    keep = visible(case.N, case.M, causal=case.causal, window=case.window, device=q.device)
    probs = torch.softmax((q @ k.transpose(-1, -2) * scale).masked_fill(~keep, float("-inf")), -1).nan_to_num(0.0)
    delta = (dout * (probs @ v)).sum(-1, keepdim=True)  # (B, Hq, N, 1)
    ds_terms = probs * (dout.abs() @ v.abs().transpose(-1, -2) + delta.abs())  # (B, Hq, N, M)
    group = (case.B, case.Hkv, case.Hq // case.Hkv, case.M, case.D)
    dq = scale * ds_terms @ k.abs()
    dk = (scale * ds_terms.transpose(-1, -2) @ q.abs()).reshape(group).sum(2)
    dv = (probs.transpose(-1, -2) @ dout.abs()).reshape(group).sum(2)
    return tuple(float(t.max()) for t in (dq, dk, dv))


def _reference_grads_f32(case, device):
    return _reference_run(dataclasses.replace(case, dtype="float32"), device, "float32", True)[1]


def deterministic(impl, case, device):
    """Three calls on the same q, k, v: the case's inputs; the next seed's, written over them in place; the case's
    again, written through `.data` (no version bump). Each output is within noise of the reference for the inputs it
    was given, the third is bitwise the first, and no call changes an output an earlier call returned: an impl that
    writes every call into one buffer, or keeps anything from an earlier call (keyed on the tensors, their addresses
    or versions), fails. Returns the worse margin."""
    call, first = _call_impl(impl, case, device)
    margins = [_out_margin("out of the first call", first, case, device)]
    first_unchanged = tolerance.unchanged_later(first)
    updated = dataclasses.replace(case, seed=case.seed + 1)
    copy_inputs_in_place(call.args, make_call(updated, device).args)
    second = impl.fn(*call.args, **call.kwargs)
    margins.append(_out_margin("out after q, k, v were overwritten in place", second, updated, device))
    second_unchanged = tolerance.unchanged_later(second)
    copy_inputs_in_place(call.args, make_call(case, device).args, through_data=True)
    third = impl.fn(*call.args, **call.kwargs)
    first_unchanged()
    second_unchanged()
    tolerance.exact("the third call (the first call's inputs again, written through .data) vs the first call", third,
                    first)
    return max(margins)


def no_input_mutation(impl, case, device):
    call = make_call(case, device)
    inputs_unchanged = tolerance.buffers_unchanged_later(list(zip("qkv", call.args)))
    check_qkv(call)
    impl.fn(*call.args, **call.kwargs)
    inputs_unchanged()


def empty_rows_are_zero(impl, case, device):
    _, out = _call_impl(impl, case, device)
    empty = ~visible(case.N, case.M, causal=case.causal, window=case.window, device=out.device).any(dim=1)  # (N,)
    tolerance.exact("rows with no visible key", out[:, :, empty], torch.zeros_like(out[:, :, empty]))


def finite_where_reference_finite(impl, case, device):
    _, out = _call_impl(impl, case, device)
    (stick, _), _ = ORACLE(case, device, False)
    bad = torch.isfinite(stick.cpu()) & ~torch.isfinite(out.detach().cpu())
    if bad.any():
        raise PropertyFailed(f"{int(bad.sum())} NaN/inf outputs where the float64 reference is finite, "
                             f"first at {tuple(int(i) for i in bad.nonzero()[0])}")


PROPERTIES = [
    Property("matches_reference", matches_reference,
             doc="out within 2x the eager low-precision error of the float64 reference"),
    Property("grads_match_reference", grads_match_reference, applies=_has_backward,
             doc="out (run with grad) and dq, dk, dv within 2x the eager low-precision error of float64 autograd"),
    Property("deterministic", deterministic,
             doc="three calls with q, k, v rewritten in place between them: each right, the first and third bitwise "
                 "equal, no earlier output overwritten"),
    Property("no_input_mutation", no_input_mutation, doc="q, k, v and the buffers they view are unchanged"),
    Property("empty_rows_are_zero", empty_rows_are_zero, applies=lambda impl, case: case.empty_rows > 0,
             doc="a query with no visible key outputs exact zeros"),
    Property("finite_where_reference_finite", finite_where_reference_finite, doc="no NaN/inf the reference lacks"),
]


# --------------------------------------------------------------------------------------------------- cost


def visible_pairs(case: AttentionCase) -> int:
    return int(visible(case.N, case.M, causal=case.causal, window=case.window).sum())


def cost(case: AttentionCase, mode: str = "fwd") -> Cost:
    """Forward: 4 B Hq D x (visible query-key pairs) FLOPs; reads q, k, v once and writes out. Backward: 2.5x the
    forward FLOPs (FlashAttention's convention); reads q, k, v, out, dout and writes dq, dk, dv."""
    size = dtype_of(case.dtype).itemsize
    flops = 4.0 * case.B * case.Hq * case.D * visible_pairs(case)
    q_bytes = case.B * case.Hq * case.N * case.D * size
    kv_bytes = case.B * case.Hkv * case.M * case.D * size
    if mode == "fwd":
        return Cost(flops, 2 * q_bytes + 2 * kv_bytes)
    return Cost(2.5 * flops, 5 * q_bytes + 4 * kv_bytes)


BENCH_CASES = [
    AttentionCase(8, 16, 16, 2048, 2048, 128, causal=c, dtype="bfloat16") for c in (False, True)
] + [
    AttentionCase(2, 16, 16, 8192, 8192, 128, causal=c, dtype="bfloat16") for c in (False, True)
] + [
    AttentionCase(4, 32, 32, 4096, 4096, 64, causal=c, dtype="bfloat16") for c in (False, True)
] + [
    AttentionCase(4, 16, 16, 4096, 4096, 128, causal=c, dtype="bfloat16") for c in (False, True)
] + [
    AttentionCase(4, 32, 8, 4096, 4096, 128, causal=True, dtype="bfloat16"),  # GQA 32/8
]
QUICK_CASES = [
    AttentionCase(1, 4, 4, 256, 256, 64, causal=c, dtype="float32") for c in (False, True)
] + [AttentionCase(1, 8, 2, 512, 512, 64, causal=True, dtype="float32")]


# --------------------------------------------------------------------------------------------------- claims


def claims() -> list[Claim]:
    """The seed's FlashAttention statements (section 5.1 and its list of misconceptions)."""
    from llmopt.bench.results import best_fraction_of_peak  # reads committed GPU results, if any

    case = AttentionCase(2, 4, 2, 97, 255, 40, causal=True, dtype="float64", seed=11)
    q, k, v = make_call(case, "cpu").args
    gap = float((attention_tiled(q, k, v, causal=True, block_m=32, block_n=16)
                 - attention(q, k, v, causal=True)).abs().max())
    ledger = [
        Claim("attention.exact", "FlashAttention is mathematically exact: tiling + online softmax equal standard "
              "attention", "exact", "", f"max |tiled - naive| = {gap:.1e} in float64", "reference/attention.py: "
              "attention_tiled vs attention, float64, causal GQA N=97 M=255 D=40", "cpu",
              "confirmed" if gap < 1e-12 else "wrong"),
    ]
    seed_utilization = {"fa1": ("FlashAttention-1", "25-40%", "A100"), "fa2": ("FlashAttention-2", "50-73%", "A100"),
                        "fa3": ("FlashAttention-3", "75%+", "A100 (FA3 targets Hopper: it does not run on A100)")}
    impls_for = {"fa1": (), "fa2": ("sdpa_flash",), "fa3": ("vllm_fa3",)}
    for key, (name, seed_value, gpu) in seed_utilization.items():
        measured = best_fraction_of_peak("attention", impls_for[key])
        ours = (f"{measured['pct']:.0f}% of {measured['peak_tflops']:.0f} TFLOP/s dense bf16 on {measured['machine']} "
                f"({measured['impl']}, {measured['case_id']})") if measured else None
        ledger.append(Claim(f"attention.utilization.{key}", f"{name} utilization on {gpu}", seed_value, "% of peak",
                            ours, "best forward TFLOP/s in results/<machine>/attention.jsonl over the datasheet dense "
                            "peak; the seed's figures are for A100, which we do not have", measured["machine"]
                            if measured else "-", "not checkable here"))
    return ledger


# The foundation's target for the in-house kernel: at least FlashAttention-2 (SDPA's flash backend) on every bench
# shape, forward and backward.
GOALS = tuple(Goal(f"triton_flash.vs_fa2.{mode}", f"triton_flash {mode} >= 1.0x SDPA flash (FlashAttention-2) on every "
                   "bench shape", "triton_flash", "speedup", 1.0, baseline="sdpa_flash",
                   applies=lambda case, m, mode=mode: m == mode) for mode in ("fwd", "bwd"))

CONTRACT = Contract(
    name="attention",
    reference=attention,
    validate=check_qkv,
    case_type=AttentionCase,
    cases=cases,
    make_call=make_call,
    properties=PROPERTIES,
    bench_cases=BENCH_CASES,
    quick_cases=QUICK_CASES,
    cost=cost,
    features=features,
    feature_names=FEATURES,
    claims=claims,
    goals=GOALS,
    baseline_impl="sdpa_flash",
    examples=examples,
    bench_modes=("fwd", "bwd"),
)
