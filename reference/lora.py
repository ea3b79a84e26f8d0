"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"; seed section 3.1): a frozen weight W and
a trainable low-rank update, y = x·Wᵀ + scaling·(x·Aᵀ)·Bᵀ with scaling = α/r. Variants: the merged deployment
W + scaling·B·A (and unmerge), rank 0 (no adapter). The contract `lora`, the adapter-contract machinery dora and qlora
share (float64 stick, gradients of the trainable tensors only, merge equivalence), and the seed's claims on LLaMA-7B:
trainable parameters counted by peft on the meta device, fine-tuning memory of full, LoRA and QLoRA training."""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from llmopt.reference import tolerance
from llmopt.reference.contract import (
    WHEN_SET,
    Call,
    Claim,
    Contract,
    Cost,
    Property,
    PropertyFailed,
    copy_inputs_in_place,
    drawing,
    dtype_of,
    place_x,
)

# --------------------------------------------------------------------------------------------------- the reference


def lora_linear(x, W, A, B, *, scaling):
    """x (..., in), W (out, in) frozen, A (r, in), B (out, r) -> (..., out) = x·Wᵀ + scaling·(x·Aᵀ)·Bᵀ, in x's
    dtype. r = 0 is no adapter: x·Wᵀ."""
    return x @ W.mT + scaling * ((x @ A.mT) @ B.mT)


def merge_lora(W, A, B, *, scaling):
    """W + scaling·B·A (out, in): the weight of the merged deployment, computed in W's dtype."""
    return W + scaling * (B @ A)


def unmerge_lora(W_merged, A, B, *, scaling):
    """W_merged - scaling·B·A: the base weight back, within the rounding of W_merged."""
    return W_merged - scaling * (B @ A)


# --------------------------------------------------------------------------------------------------- the signature

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
ADAPTER_DTYPES = ("float32", "float16", "bfloat16", "float64")  # drawn for an impl that names none


def check_tensors(named: dict, layout: str) -> torch.Tensor:
    """Each value a floating tensor of one dtype on one device (ValueError naming `layout` otherwise); returns the
    first."""
    first = next(iter(named.values()))
    for name, t in named.items():
        if not isinstance(t, torch.Tensor) or t.dtype not in DTYPES:
            raise ValueError(f"{name} must be a float16/bfloat16/float32/float64 tensor: expected {layout}; got "
                             f"{getattr(t, 'dtype', type(t))}")
        if t.dtype != first.dtype or t.device != first.device:
            raise ValueError(f"{', '.join(named)} must share one dtype and device; {name} is {t.dtype} on {t.device}, "
                             f"{next(iter(named))} {first.dtype} on {first.device}")
    return first


def check_scaling(call: Call, what: str) -> None:
    if set(call.kwargs) != {"scaling"}:
        raise ValueError(f"{what} takes exactly one keyword, scaling (alpha / r); got {sorted(call.kwargs)}")
    scaling = call.kwargs["scaling"]
    if isinstance(scaling, bool) or not isinstance(scaling, (int, float)) or not math.isfinite(scaling):
        raise ValueError(f"scaling must be a finite number (alpha / r), got {scaling!r}")


def check_frozen(name: str, t: torch.Tensor) -> None:
    if t.requires_grad:
        raise ValueError(f"{name} is the frozen base weight: expected requires_grad=False (only the adapter trains)")


def check_low_rank(x, A, B, n_out: int, n_in: int, layout: str) -> None:
    if x.dim() < 1 or x.shape[-1] != n_in or x.numel() == 0:
        raise ValueError(f"x must be non-empty (..., in) with in = {n_in}: expected {layout}; got x {tuple(x.shape)}")
    if A.dim() != 2 or B.dim() != 2 or A.shape[1] != n_in or B.shape != (n_out, A.shape[0]):
        raise ValueError(f"expected {layout}; got A {tuple(A.shape)}, B {tuple(B.shape)} for a ({n_out}, {n_in}) "
                         f"weight")


def check_lora_call(call: Call) -> None:
    """ValueError naming the layout unless the call is lora(x, W, A, B, *, scaling) with x (..., in), W (out, in)
    frozen, A (r, in), B (out, r), r >= 0, one floating dtype and device, scaling a finite number."""
    layout = "x (..., in), W (out, in) with requires_grad=False, A (r, in), B (out, r)"
    if len(call.args) != 4:
        raise ValueError(f"lora takes (x, W, A, B, *, scaling), got {len(call.args)} positional arguments")
    check_scaling(call, "lora")
    x, W, A, B = call.args
    check_tensors({"x": x, "W": W, "A": A, "B": B}, layout)
    if W.dim() != 2 or 0 in W.shape:
        raise ValueError(f"W must be a non-empty (out, in) matrix: expected {layout}; got {tuple(W.shape)}")
    check_frozen("W", W)
    check_low_rank(x, A, B, W.shape[0], W.shape[1], layout)


# --------------------------------------------------------------------------------------------------- the cases

# strided: x and dy every other column of wider buffers (place_x), W, A, B stored transposed; sliced: x, dy, W, A and B
# column blocks of wider buffers (unit column stride, a row stride past the row's width, a storage offset)
LAYOUTS = ("contiguous", "strided", "sliced")


@dataclass(frozen=True)
class LoraCase:
    """x (*batch, n_in) N(0, 1); W N(0, 1/n_in); A N(0, 1/n_in); B N(0, b_scale^2 / r) (a trained adapter, b_scale 1:
    as strong as the base; b_scale 0: B = 0, the adapter at initialization, which must still train); rank 0 means no
    adapter. `frozen`: "A" or "B" does not train (LoRA-FA freezes A), the other does; "AB": neither (an adapter kept
    frozen in a model whose other layers train: x still does). scaling 0 (lora_alpha 0): the update adds nothing, yet
    its factors get their (zero) gradients."""

    batch: tuple
    n_in: int
    n_out: int
    rank: int
    scaling: float = 2.0
    dtype: str = "float32"
    x_requires_grad: bool = False
    layout: str = "contiguous"
    b_scale: float = 1.0
    frozen: str = field(default="", metadata=WHEN_SET)
    seed: int = 0


def lora_features(case) -> set[str]:
    return {"strided"} if case.layout != "contiguous" else set()


def random_tensor(gen: torch.Generator, *shape: int, std: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * std


def place_weight(w: torch.Tensor, layout: str, dtype: torch.dtype, device: str) -> torch.Tensor:
    """w (a matrix: W, A or B) in `dtype` on `device`, row-major, or a view of a NaN-filled larger buffer: (layout
    "strided") stored transposed after one NaN row (a slice of a fused weight: a storage offset); ("sliced") a column
    block of wider rows, as place_x places x (unit column stride, rows apart by more than their width)."""
    if layout == "contiguous":
        return w.to(device=device, dtype=dtype)
    if layout == "sliced":
        return place_x(w, layout, dtype, device)
    stored = torch.full((w.shape[1] + 1, w.shape[0]), float("nan"), dtype=dtype, device=device)
    stored[1:] = w.mT.to(device=device, dtype=dtype)
    return stored[1:].mT


def lora_make_call(case: LoraCase, device: str) -> Call:
    gen = torch.Generator().manual_seed(case.seed)
    dtype = dtype_of(case.dtype)
    x = place_x(random_tensor(gen, *case.batch, case.n_in), case.layout, dtype, device)
    W = place_weight(random_tensor(gen, case.n_out, case.n_in, std=case.n_in**-0.5), case.layout, dtype, device)
    A, B = (place_weight(t, case.layout, dtype, device) for t in random_adapter(gen, case, dtype, device))
    return Call((x, W, A, B), {"scaling": case.scaling})


def random_adapter(gen: torch.Generator, case, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A (rank, n_in) ~ N(0, 1/n_in) and B (n_out, rank) ~ N(0, b_scale^2 / rank) of a case, drawn from `gen`."""
    A = random_tensor(gen, case.rank, case.n_in, std=case.n_in**-0.5)
    B = random_tensor(gen, case.n_out, case.rank, std=case.b_scale / max(case.rank, 1) ** 0.5)
    return A.to(device=device, dtype=dtype), B.to(device=device, dtype=dtype)


def lora_cases(impl, mode: str):
    from hypothesis import strategies as st

    on, small, dtypes = drawing(impl, mode, ADAPTER_DTYPES)
    sizes = [1, 3, 16, 33, 64] + ([] if small else [100, 128])
    build = st.builds(
        LoraCase,
        batch=st.sampled_from([(1,), (3,), (16,), (2, 5)] + ([] if small else [(40,), (2, 33), (2, 3, 2)])),
        n_in=st.sampled_from(sizes), n_out=st.sampled_from(sizes), rank=st.sampled_from([0, 1, 2, 8, 16, 17]),
        scaling=st.sampled_from([2.0, 0.5, 1.0, 16.0, 0.3, 0.0]), dtype=st.sampled_from(dtypes),
        x_requires_grad=st.booleans(),
        layout=st.sampled_from(LAYOUTS if on("strided") else ("contiguous",)),
        b_scale=st.sampled_from([1.0, 1.0, 0.01, 0.0]), frozen=st.sampled_from(["", "", "A", "B", "AB"]),
        seed=st.integers(0, 2**16))
    return build.filter(lambda case: LORA_CONTRACT.unsupported(case, impl.supports) is None)


LORA_EXAMPLES = [
    LoraCase((3,), 33, 40, 8, 2.0, "float32", x_requires_grad=True, seed=1),
    LoraCase((2, 5), 64, 16, 16, 0.5, "float16", layout="strided", seed=2),
    LoraCase((16,), 16, 64, 1, 2.0, "bfloat16", x_requires_grad=True, seed=3),
    LoraCase((1,), 7, 5, 0, 1.0, "float32", x_requires_grad=True, seed=4),  # no adapter: x still trains
    LoraCase((4,), 100, 31, 17, 1.0, "float16", x_requires_grad=True, b_scale=0.01, seed=5),
    # a square weight (a transposed update is the same shape) and each dimension past 128 (a tile that never loops)
    LoraCase((4,), 24, 24, 8, 2.0, "float32", x_requires_grad=True, seed=6),
    LoraCase((3,), 24, 160, 4, 1.0, "float32", x_requires_grad=True, seed=7),
    LoraCase((2,), 160, 24, 4, 1.0, "float32", x_requires_grad=True, seed=8),
    # 200 tokens, rank 40, 272 inputs (tiles of tokens, rank and K that must loop), a scaling no 16-bit type holds,
    # x a slice of a wider hidden state and W, A, B slices of fused weights; x of shape (in,)
    LoraCase((200,), 272, 24, 40, 0.3, "float32", x_requires_grad=True, layout="strided", seed=9),
    LoraCase((), 24, 16, 4, 0.3, "float32", x_requires_grad=True, seed=10),
    # the adapter at initialization (B = 0: the output is the base, yet A and B get gradients); x of three batch
    # dimensions, every input a column block of a wider buffer; float64 (held to float64's rounding)
    LoraCase((5,), 33, 40, 8, 2.0, "float32", x_requires_grad=True, b_scale=0.0, seed=20),
    LoraCase((2, 3, 2), 40, 24, 8, 2.0, "float32", x_requires_grad=True, layout="sliced", seed=21),
    LoraCase((3,), 48, 20, 8, 2.0, "float64", x_requires_grad=True, seed=22),
    # a real layer's rank and width: rank 72 and 1100 inputs (tiles of rank and K that must loop past 64 and 512)
    LoraCase((5,), 1100, 24, 72, 0.5, "float32", x_requires_grad=True, seed=23),
    # A frozen (LoRA-FA), then B: the other still trains; then both (x alone trains)
    LoraCase((4,), 33, 24, 8, 2.0, "float32", x_requires_grad=True, frozen="A", seed=24),
    LoraCase((4,), 24, 33, 8, 2.0, "float32", frozen="B", seed=25),
    LoraCase((4,), 24, 33, 8, 2.0, "float16", x_requires_grad=True, frozen="AB", seed=26),
    # scaling 0 (lora_alpha 0): the base alone, A and B still get their (zero) gradients
    LoraCase((3,), 24, 16, 4, 0.0, "float32", x_requires_grad=True, seed=27),
    # a training batch of 2 x 1024 tokens: a path taken only past some token count (a long prefill) must still train
    LoraCase((2, 1024), 24, 16, 4, 2.0, "float32", x_requires_grad=True, seed=28),
]


def too_slow_to_interpret(case) -> bool:
    """Triton's interpreter: no bfloat16, nothing past 64 wide or 256 tokens."""
    return case.dtype == "bfloat16" or max(case.n_in, case.n_out) > 64 or math.prod(case.batch) > 256


def lora_examples(mode: str) -> list[LoraCase]:
    return [c for c in LORA_EXAMPLES if not (mode == "interpret" and too_slow_to_interpret(c))]


# --------------------------------------------------------------------------------------------------- adapter machinery


def _is_float_tensor(value) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


@dataclass(frozen=True)
class AdapterSpec:
    """What the adapter contracts (lora, dora, qlora) share: the reference, inputs and validation of the contract; the
    argument positions that train (x, position 0, also trains when the case says x_requires_grad), among them A and B
    (`low_rank`: empty, so not trained, at rank 0, and not the ones a case freezes, `frozen` "A", "B" or "AB");
    everything else is frozen."""

    reference: Callable
    make_call: Callable
    validate: Callable
    trainable: tuple[int, ...]
    names: tuple[str, ...]
    magnitudes: Callable  # (float64 call, float64 dout, trained) -> {"out" or a position: the scale of its terms}
    low_rank: tuple[int, ...] = (2, 3)
    # other formulations of the same function that a library computes (equal to the reference in exact arithmetic,
    # rounding differently): the eager low-precision error the tolerance scales is the worst of them and the reference
    formulations: tuple[Callable, ...] = ()

    def run_reference(self, case, device: str, precision: torch.dtype, grads: bool, formulation=None):
        """(out, grads of the trained positions or None) of the reference (or another formulation of it) on the case
        cast to `precision`."""
        call = self.make_call(case, device)
        trained = self.trained(case)
        args = tuple(a.detach().to(precision).requires_grad_(grads and i in trained) if _is_float_tensor(a) else a
                     for i, a in enumerate(call.args))
        out = (formulation or self.reference)(*args, **call.kwargs)
        if not grads:
            return out.detach(), None
        dout = self.dout(case, out.shape, device).to(out.dtype)
        return out.detach(), torch.autograd.grad(out, [args[i] for i in trained], dout)

    def trained(self, case) -> tuple[int, ...]:
        frozen = {"A": self.low_rank[:1], "B": self.low_rank[1:], "AB": self.low_rank}.get(case.frozen, ())
        return ((0,) if case.x_requires_grad else ()) + tuple(
            p for p in self.trainable if (case.rank > 0 or p not in self.low_rank) and p not in frozen)

    @staticmethod
    def dout(case, shape, device: str) -> torch.Tensor:
        """The output gradient of a case: N(0, 1) of the output's shape, deterministic in the seed."""
        gen = torch.Generator().manual_seed(case.seed + 7919)
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device)


def _worse_eager(first, second, stick):
    """(out, grads) taking, output by output, the eager result further from the float64 stick (finite errors only: an
    overflowing formulation leaves the bound to the others)."""

    def error(eager, exact):
        worst = tolerance.max_error(eager, exact)
        return worst if math.isfinite(worst) else -1.0

    def pick(a, b, exact):
        return b if error(b, exact) > error(a, exact) else a

    out = pick(first[0], second[0], stick[0])
    grads = None if first[1] is None else tuple(pick(a, b, s) for a, b, s in zip(first[1], second[1], stick[1]))
    return out, grads


class _Oracle:
    """The float64 stick and the eager low-precision reference of a case (with gradients when asked; the worst of the
    spec's formulations), cached."""

    def __init__(self, size: int = 16):
        self.size, self.store = size, {}

    def __call__(self, spec: AdapterSpec, case, device: str, grads: bool):
        key = (spec.reference, case, device, grads)
        if key not in self.store:
            if len(self.store) >= self.size:
                self.store.pop(next(iter(self.store)))
            stick = spec.run_reference(case, device, torch.float64, grads)
            eager = spec.run_reference(case, device, dtype_of(case.dtype), grads)
            for formulation in spec.formulations:
                eager = _worse_eager(eager, spec.run_reference(case, device, dtype_of(case.dtype), grads, formulation),
                                     stick)
            call = spec.make_call(case, device)
            call64 = Call(tuple(a.double() if _is_float_tensor(a) else a for a in call.args), call.kwargs)
            magnitudes = spec.magnitudes(call64, spec.dout(case, stick[0].shape, device), spec.trained(case))
            self.store[key] = (stick, eager, magnitudes)
        return self.store[key]


ORACLE = _Oracle()


def _eager32(spec: AdapterSpec, case, device: str, grads: bool, index: int | None = None):
    def run():
        out, found = spec.run_reference(case, device, torch.float32, grads)
        return out if index is None else found[index]

    return run


def _impl_call(spec: AdapterSpec, impl, case, device: str, trained: tuple[int, ...] = ()):
    call = spec.make_call(case, device)
    call = Call(tuple(a.requires_grad_(True) if i in trained else a for i, a in enumerate(call.args)), call.kwargs)
    spec.validate(call)
    return call, impl.fn(*call.args, **call.kwargs)


def matches_reference(spec: AdapterSpec):
    def check(impl, case, device):
        _, out = _impl_call(spec, impl, case, device)
        (stick, _), (eager, _), magnitudes = ORACLE(spec, case, device, False)
        return tolerance.noise_relative("out", out, stick, eager, dtype_of(case.dtype),
                                        eager_float32=_eager32(spec, case, device, False), magnitude=magnitudes["out"])

    return check


def has_backward(spec: AdapterSpec):
    """The gradient property applies to impls with a backward, below float64, where something trains."""
    return lambda impl, case: (impl.supports.get("backward", True) is not False and case.dtype != "float64"
                               and bool(spec.trained(case)))


def _grads_margin(spec: AdapterSpec, case, device: str, trained: tuple[int, ...], grads, when: str = "") -> float:
    """The worst margin of an impl's gradients of the `trained` positions against float64 autograd on the case, each
    within 2x the eager low-precision error (the oracle's) plus the rounding floor of its terms."""
    (_, stick), (_, eager), magnitudes = ORACLE(spec, case, device, True)
    return max(tolerance.noise_relative(
        f"d{spec.names[position]}{when}", grad, stick[index], eager[index], dtype_of(case.dtype),
        eager_float32=_eager32(spec, case, device, True, index), magnitude=magnitudes.get(position))
        for index, (position, grad) in enumerate(zip(trained, grads)))


def grads_match_reference(spec: AdapterSpec):
    """Only the trained tensors (the adapter, and x when it requires grad) receive gradients, within 2x the eager
    low-precision error of float64 autograd; the frozen base gets none, its requires_grad stays False. A second layer
    of the same shape runs its forward before the first one's backward (as in a model: nothing the backward reads may
    live in a buffer shared by shape). The backward leaves dy and every input as they were (in a model x also feeds
    the layers beside this one, q, k and v projections, whose backward reads it later; a backward writing dx into x's
    buffer corrupts them), and a second backward through the retained graph gives the gradients again (nothing the
    backward reads is consumed by the first). A user impl may be forward-only (no autograd graph on any case), not on
    some cases only."""
    graphs: dict[str, bool] = {}  # user impl -> whether its outputs carry an autograd graph

    def check(impl, case, device):
        trained = spec.trained(case)
        call, out = _impl_call(spec, impl, case, device, trained)
        has_graph = out.grad_fn is not None
        if impl.kind == "user" and graphs.setdefault(impl.name, has_graph) != has_graph:
            raise PropertyFailed(f"the output carries {'an' if has_graph else 'no'} autograd graph here and "
                                 f"{'no' if has_graph else 'one'} on an earlier case: gradients go missing on some "
                                 f"inputs")
        if not has_graph:
            if impl.kind == "user":  # a forward-only user kernel: nothing to check
                return None
            raise PropertyFailed("impl declares a backward but its output carries no autograd graph")
        _, second_layer = _impl_call(spec, impl, replace(case, seed=case.seed + 1), device, trained)
        # the output gradient in the case's layout: a strided case's backward gets a strided dy, which it must leave
        # as it was (in a model dy also flows down the residual branch)
        dy = place_x(spec.dout(case, out.shape, device), case.layout, out.dtype, device)
        buffers_unchanged = tolerance.buffers_unchanged_later(
            [("the output gradient dy", dy), *_input_tensors(spec, call)], "after backward")
        out.backward(dy, retain_graph=True)
        del second_layer  # kept alive (its graph and buffers) through the first layer's backward
        buffers_unchanged()
        for i, a in enumerate(call.args):
            frozen = [a] if isinstance(a, torch.Tensor) else list(getattr(a, "tensors", dict)().values())
            for t in frozen if i not in trained else ():
                if t.requires_grad or t.grad is not None:
                    raise PropertyFailed(f"{spec.names[i]} is not trained but has requires_grad={t.requires_grad}, "
                                         f"grad {'set' if t.grad is not None else 'None'} after backward")
        for position in trained:
            if call.args[position].grad is None:
                raise PropertyFailed(f"d{spec.names[position]} is None: the output does not reach it")
        try:
            again = torch.autograd.grad(out, [call.args[position] for position in trained], dy)
        except RuntimeError as error:  # e.g. autograd's check of a saved tensor the first backward changed in place
            raise PropertyFailed(f"a second backward through the retained graph fails: {error}") from None
        return max(_grads_margin(spec, case, device, trained, [call.args[position].grad for position in trained]),
                   _grads_margin(spec, case, device, trained, again, " in a second backward through the graph"))

    return check


def backward_after_in_place_updates(spec: AdapterSpec):
    """The trained inputs (the adapter, x when it trains) overwritten in place with the next seed's values between
    the forward and the backward (an optimizer step taken before the backward of a forward that used them): the
    backward either raises autograd's error for a saved tensor modified in place, or returns the gradients of the
    values the forward saw (within noise, as grads_match_reference). An impl keeping its inputs outside
    save_for_backward (no version check) differentiates the new values instead, silently."""

    def check(impl, case, device):
        trained = spec.trained(case)
        call, out = _impl_call(spec, impl, case, device, trained)
        if out.grad_fn is None:  # a forward-only user impl: grads_match_reference says whether that is allowed
            return None
        updated = spec.make_call(replace(case, seed=case.seed + 1), device)
        copy_inputs_in_place(tuple(call.args[i] for i in trained), tuple(updated.args[i] for i in trained))
        try:
            grads = torch.autograd.grad(out, [call.args[i] for i in trained],
                                        spec.dout(case, out.shape, device).to(out.dtype), allow_unused=True)
        except RuntimeError as error:  # autograd's checks: a saved tensor, or a saved view's base, changed in place
            if "modified by an inplace operation" in str(error) or "has been modified inplace" in str(error):
                return None
            raise
        for position, grad in zip(trained, grads):
            if grad is None:
                raise PropertyFailed(f"d{spec.names[position]} is None: the output does not reach it")
        return _grads_margin(spec, case, device, trained, grads, " after its inputs changed in place before backward")

    return check


def deterministic(spec: AdapterSpec):
    def check(impl, case, device):
        tolerance.same_twice(lambda: _impl_call(spec, impl, case, device)[1])

    return check


def follows_in_place_updates(spec: AdapterSpec):
    """Called again after every input was overwritten in place with the next seed's values (an optimizer step on the
    adapter, new weights loaded into the same buffers) and with another scaling, then again after the seed after that
    was written through `.data` (no version bump; the same scaling), the output is within noise of the reference at the
    new values each time: nothing the impl kept from an earlier call (a merged or dequantized weight cached by tensor
    identity, address or version, a kernel specialized on the first scaling) may go stale. The first call's output must
    be left as it was by the later calls (an impl writing every call into one buffer fails). Returns the worse
    margin."""

    def check(impl, case, device):
        call = spec.make_call(case, device)
        spec.validate(call)
        first_unchanged = tolerance.unchanged_later(impl.fn(*call.args, **call.kwargs))
        margins = []
        for step, through_data in ((1, False), (2, True)):  # the second keeps the first's scaling: values alone change
            updated = replace(case, seed=case.seed + step, scaling=1.5 * case.scaling + 0.25)
            updated_call = spec.make_call(updated, device)
            copy_inputs_in_place(call.args, updated_call.args, through_data)
            out = impl.fn(*call.args, **updated_call.kwargs)
            (stick, _), (eager, _), magnitudes = ORACLE(spec, updated, device, False)
            written = "through .data (no version bump)" if through_data else "in place"
            margins.append(tolerance.noise_relative(
                f"out after its inputs were written {written} and the scaling changed", out, stick, eager,
                dtype_of(updated.dtype), eager_float32=_eager32(spec, updated, device, False),
                magnitude=magnitudes["out"]))
        first_unchanged()
        return max(margins)

    return check


def _input_tensors(spec: AdapterSpec, call: Call) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of every tensor of the call: the inputs, an NF4 state tensor by tensor."""
    return [(f"{spec.names[i]}{'.' + k if k else ''}", t) for i, a in enumerate(call.args)
            for k, t in ({"": a} if isinstance(a, torch.Tensor) else a.tensors()).items()]


def no_input_mutation(spec: AdapterSpec):
    def check(impl, case, device):
        call = spec.make_call(case, device)
        spec.validate(call)
        inputs_unchanged = tolerance.buffers_unchanged_later(_input_tensors(spec, call))
        impl.fn(*call.args, **call.kwargs)
        inputs_unchanged()

    return check


def allowance(stick: torch.Tensor, eager: torch.Tensor, dtype: torch.dtype, magnitude: float | None = None) -> float:
    """What noise_relative allows against `stick`: k x the eager error + the rounding floor (of `magnitude`, default
    max |stick|)."""
    stick64 = stick.double()
    magnitude = float(stick64.abs().max()) if magnitude is None else magnitude
    return (tolerance.K_NOISE * float((eager.double() - stick64).abs().max())
            + tolerance.FLOOR_ULPS[dtype] * torch.finfo(dtype).eps * magnitude)


def merge_equivalence(spec: AdapterSpec, merged_weight: Callable, merged_output: Callable):
    """The adapter's output and the merged deployment's output agree within what each may err:
    |adapter - merged| <= allowed(adapter vs float64) + |float64 adapter - float64 merged| (the rounding of the merged
    weight to the dtype, computed exactly) + allowed(merged vs float64). `merged_weight(call64)` is the merged weight in
    float64; `merged_output(impl, call, weight)` runs the merged deployment in the case's dtype. The adapter's output
    must be left as it was by that later call (an impl writing every call into one buffer fails)."""

    def check(impl, case, device):
        dtype = dtype_of(case.dtype)
        call, out = _impl_call(spec, impl, case, device)
        (stick, _), (eager, _), magnitudes = ORACLE(spec, case, device, False)
        call64 = Call(tuple(a.double() if _is_float_tensor(a) else a for a in call.args), call.kwargs)
        weight = merged_weight(call64).to(dtype)  # (out, in), rounded once
        x = call.args[0]
        out_unchanged = tolerance.unchanged_later(out)
        merged = merged_output(impl, call, weight)
        out_unchanged()
        with torch.no_grad():  # numbers, not a graph (a wrong impl may hand back an output or base that requires grad)
            merged_stick = x.double() @ weight.double().mT
            merged_eager = x @ weight.mT
            bound = (allowance(stick, eager, dtype, magnitudes["out"]) + float((stick - merged_stick).abs().max())
                     + allowance(merged_stick, merged_eager, dtype))
            gap = float((out.double() - merged.double()).abs().max())
        if gap > bound:
            raise PropertyFailed(f"adapter vs merged deployment: max difference {gap:.3e} exceeds {bound:.3e} (each "
                                 f"one's noise allowance + the merged weight's rounding)")
        return gap / bound if bound > 0 else 0.0

    return check


# --------------------------------------------------------------------------------------------------- lora properties

def term_magnitudes(fn: Callable, call: Call, dout: torch.Tensor, trained: tuple[int, ...]) -> dict:
    """The scale of the terms the output and each trained gradient sum, for the rounding floor: `fn` and its gradients
    evaluated in float64 at |inputs|, |scaling|, |dout|, where no term cancels: the Σ|terms| of the classic bound
    |fl(Σ) - Σ| <= γ_n Σ|terms|. The base and adapter contributions of a strong adapter cancel, and gradients sum
    over tokens with both signs: their rounding scales with these, not with the result."""
    absolute = [a.abs().requires_grad_(i in trained) if _is_float_tensor(a) else a for i, a in enumerate(call.args)]
    out = fn(*absolute, **{k: abs(v) for k, v in call.kwargs.items()})
    grads = torch.autograd.grad(out, [absolute[i] for i in trained], dout.abs()) if trained else ()
    return {"out": float(out.detach().max()), **{i: float(g.max()) for i, g in zip(trained, grads)}}


LORA_SPEC = AdapterSpec(lora_linear, lora_make_call, check_lora_call, trainable=(2, 3), names=("x", "W", "A", "B"),
                        magnitudes=lambda call, dout, trained: term_magnitudes(lora_linear, call, dout, trained))


def zero_update_is_the_base(spec: AdapterSpec, weight_of: Callable):
    """With B = 0 the impl's output equals, bit for bit, its own output with no adapter (rank 0: A (0, in), B (out, 0)),
    the model at LoRA's initialization being exactly the base model; and that base output is within noise of the
    float64 x·Wᵀ (`weight_of(call)`: W, or the dequantized NF4 weight)."""

    def check(impl, case, device):
        call = spec.make_call(case, device)
        x, base, A, B = call.args
        zero_b = Call((x, base, A, torch.zeros_like(B)), call.kwargs)
        rank0 = Call((x, base, A[:0], B[:, :0]), call.kwargs)
        spec.validate(zero_b)
        spec.validate(rank0)
        with_zero_b, without = impl.fn(*zero_b.args, **zero_b.kwargs), impl.fn(*rank0.args, **rank0.kwargs)
        tolerance.exact("output with B = 0 vs output with no adapter", with_zero_b, without)
        weight = weight_of(call)
        stick = x.double() @ weight(torch.float64).mT
        return tolerance.noise_relative("output with no adapter", without, stick, x @ weight(x.dtype).mT,
                                        dtype_of(case.dtype))

    return check


def _lora_merged_output(impl, call: Call, weight: torch.Tensor):
    """The impl's own base path on the merged weight: (x, W', A, B = 0)."""
    x, _, A, B = call.args
    return impl.fn(x, weight, A, torch.zeros_like(B), **call.kwargs)


LORA_PROPERTIES = [
    Property("matches_reference", matches_reference(LORA_SPEC),
             doc="y within 2x the eager low-precision error of the float64 reference"),
    Property("grads_match_reference", grads_match_reference(LORA_SPEC), applies=has_backward(LORA_SPEC),
             doc="only A, B (and x when it requires grad) get gradients, within 2x the eager error; W.grad stays None; "
                 "the backward leaves its inputs and dy as they were, and a second one agrees"),
    Property("backward_after_in_place_updates", backward_after_in_place_updates(LORA_SPEC),
             applies=has_backward(LORA_SPEC),
             doc="trained inputs changed in place before backward: autograd's error, or the forward's gradients"),
    Property("zero_update_is_the_base", zero_update_is_the_base(LORA_SPEC, lambda call: call.args[1].to),
             doc="B = 0 gives bitwise the impl's no-adapter (rank 0) output, itself within noise of x·Wᵀ"),
    Property("merge_equivalence", merge_equivalence(
        LORA_SPEC, lambda c: merge_lora(*c.args[1:], **c.kwargs), _lora_merged_output),
        doc="adapter output vs the impl's base path on W + scaling·B·A, within both noises and the merge rounding"),
    Property("deterministic", deterministic(LORA_SPEC), doc="two calls are bitwise equal"),
    Property("follows_in_place_updates", follows_in_place_updates(LORA_SPEC),
             doc="after x, W, A, B are overwritten in place and the scaling changes, the output follows"),
    Property("no_input_mutation", no_input_mutation(LORA_SPEC), doc="x, W, A, B and the buffers they view unchanged"),
]


def lora_cost(case: LoraCase, mode: str = "fwd") -> Cost:
    """Forward 2 M (out in + r (in + out)) FLOPs; reads x, W, A, B, writes y. Backward, as the benchmark takes it
    (gradients of every input but the frozen W, so no dW): dt = dy B and dB = dyᵀ t (2 M out r each), dA = dtᵀ x
    (2 M r in), dx = dy W + dt A (2 M in (out + r)); reads dy, x, W, A, B, writes dx, dA, dB."""
    M = math.prod(case.batch)
    size = dtype_of(case.dtype).itemsize
    adapter = case.rank * (case.n_in + case.n_out)
    if mode == "fwd":
        flops = 2.0 * M * (case.n_out * case.n_in + adapter)
        return Cost(flops, size * (case.n_out * case.n_in + adapter + M * (case.n_in + case.n_out)))
    flops = 2.0 * M * (case.rank * (2 * case.n_out + case.n_in) + case.n_in * (case.n_out + case.rank))
    return Cost(flops, size * (case.n_out * case.n_in + 2 * adapter + M * (2 * case.n_in + case.n_out)))


LORA_BENCH_CASES = [LoraCase((tokens,), 4096, n_out, 16, 2.0, "bfloat16", x_requires_grad=True)
                    for n_out in (4096, 11008) for tokens in (1, 16, 512, 8192)]
LORA_QUICK_CASES = [LoraCase((tokens,), 512, 512, 16, 2.0, "float32", x_requires_grad=True) for tokens in (1, 256)]


# --------------------------------------------------------------------------------------------------- claims

LLAMA_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                "num_key_value_heads": 32, "vocab_size": 32000}
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SEED_PERCENT = {8: "~0.2%", 16: "0.42% (29.4M)", 32: "~0.8%", 64: "~1.6%"}
GB = 1e9


def llama7b_on_meta():
    """LlamaForCausalLM with LLaMA-7B's configuration, built on the meta device (shapes, no memory)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        return LlamaForCausalLM(LlamaConfig(**LLAMA_7B))


def lora_trainable(model, rank: int) -> tuple[int, int]:
    """(trainable, total) parameters of `model` with LoRA of rank r on the seven projections, counted by peft."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(PROJECTIONS)))
    counts = peft_model.get_nb_trainable_parameters()
    peft_model.unload()  # takes the LoRA layers out again: the model is reused for the next rank
    return counts


def nf4_stored_bytes(shape: tuple[int, int]) -> int:
    """Bytes bitsandbytes stores for an (out, in) weight in NF4 with double quantization (blocks of 64): from the
    format's arithmetic, checked against the stored tensors of an actually quantized layer of that shape's kind."""
    from llmopt.reference.nf4 import NF4MatmulCase, nf4_matmul_stored_bytes

    return int(nf4_matmul_stored_bytes(NF4MatmulCase((1,), shape[0], shape[1], 64, True)))


def checked_nf4_layer_bytes() -> int:
    """Stored bytes of one real quantized (1024, 1024) bf16 layer (reference quantizer, bitsandbytes' layout); equal to
    nf4_stored_bytes((1024, 1024)) or the accounting is wrong."""
    from llmopt.reference.nf4 import nf4_quantize, random_weight

    stored = nf4_quantize(random_weight(1024, 1024, "normal", 0.02, 0).to(torch.bfloat16),
                          double_quant=True).stored_bytes()
    if stored != nf4_stored_bytes((1024, 1024)):
        raise AssertionError(f"NF4 accounting: a quantized 1024x1024 layer stores {stored} bytes, the formula says "
                             f"{nf4_stored_bytes((1024, 1024))}")
    return stored


def finetuning_memory(model, trainable: int) -> dict[str, dict[str, float]]:
    """Bytes of weights, gradients and Adam state for full fine-tuning (bf16 weights and gradients, fp32 master
    copy, two fp32 moments: 16 B/param), LoRA (bf16 frozen base; the adapter in bf16 with bf16 gradients, fp32 master
    and moments) and QLoRA (the seven projections in NF4 + double quantization, embeddings, head and norms in bf16)."""
    checked_nf4_layer_bytes()
    total = sum(p.numel() for p in model.parameters())
    projections = [p for name, p in model.named_parameters() if any(f".{n}." in name for n in PROJECTIONS)]
    projection_count = sum(p.numel() for p in projections)
    adapter = {"weights": 2 * trainable, "gradients": 2 * trainable, "optimizer": 12 * trainable}
    nf4_base = sum(nf4_stored_bytes(tuple(p.shape)) for p in projections) + 2 * (total - projection_count)
    return {
        "full": {"weights": 2 * total, "gradients": 2 * total, "optimizer": 12 * total},
        "lora": {"weights": 2 * total + adapter["weights"], "gradients": adapter["gradients"],
                 "optimizer": adapter["optimizer"]},
        "qlora": {"weights": nf4_base + adapter["weights"], "gradients": adapter["gradients"],
                  "optimizer": adapter["optimizer"]},
    }


@functools.cache  # pure of the installed libraries and files: computed once a process
def lora_claims() -> tuple[Claim, ...]:
    """The seed's LoRA table (3.1) and QLoRA memory table (3.2), recounted on LLaMA-7B."""
    model = llama7b_on_meta()
    counts = {rank: lora_trainable(model, rank) for rank in (8, 16, 32, 64)}
    ledger = []
    for rank, (trainable, total) in counts.items():
        base = total - trainable  # peft's total includes the adapter
        percent = 100 * trainable / base
        seed_low, seed_high = {8: (0.15, 0.25), 16: (0.40, 0.44), 32: (0.75, 0.85), 64: (1.55, 1.65)}[rank]
        ledger.append(Claim(
            f"lora.trainable.r{rank}", f"LoRA r={rank} on q,k,v,o,gate,up,down of LLaMA-7B trains this share of "
            "parameters", SEED_PERCENT[rank], "% of parameters",
            f"{percent:.3f}% ({trainable / 1e6:.2f}M trainable over the {base / 1e9:.3f}B base parameters)",
            "peft get_peft_model(LoraConfig(r, target_modules=7 projections)).get_nb_trainable_parameters() on "
            "LlamaForCausalLM(LlamaConfig(hidden 4096, intermediate 11008, 32 layers, vocab 32000)) on the meta "
            "device; the seed counts 2·4096·r for every projection, but gate/up/down are 4096x11008: "
            "r·(4096 + 11008)",
            "cpu", "confirmed" if seed_low <= percent <= seed_high else "wrong"))
    memory = finetuning_memory(model, counts[16][0])
    seed_totals = {"full": ("~100 GB (14 GB weights + ~84 GB optimizer)", 100), "lora": ("~14.2 GB", 14.2),
                   "qlora": ("~3.7 GB", 3.7)}
    for method, parts in memory.items():
        total_gb = sum(parts.values()) / GB
        seed_value, seed_gb = seed_totals[method]
        ledger.append(Claim(
            f"lora.memory.{method}", f"GPU memory of {method} fine-tuning of LLaMA-7B without activations", seed_value,
            "GB", f"{total_gb:.2f} GB (" + ", ".join(f"{k} {v / GB:.2f}" for k, v in parts.items()) + ")",
            "bytes per parameter x parameters of LLaMA-7B on the meta device: full = bf16 weights + bf16 gradients + "
            "fp32 master + 2 fp32 Adam moments (16 B); LoRA r=16 adapter likewise (16 B), base frozen in bf16; QLoRA "
            "base = 7 projections in NF4 with double quantization (bytes per shape, checked against a quantized "
            "layer's stored tensors) + embeddings, head, norms in bf16", "cpu",
            "confirmed" if abs(total_gb - seed_gb) <= 0.05 * seed_gb else "wrong"))
    return tuple(ledger)


LORA_CONTRACT = Contract(
    name="lora", reference=lora_linear, validate=check_lora_call, case_type=LoraCase, cases=lora_cases,
    make_call=lora_make_call, properties=LORA_PROPERTIES, bench_cases=LORA_BENCH_CASES, quick_cases=LORA_QUICK_CASES,
    cost=lora_cost, features=lora_features, feature_names=("strided", "backward"), claims=lora_claims,
    examples=lora_examples, bench_modes=("fwd", "bwd"), frozen_args=(1,), examples_budget={"cpu": 10, "interpret": 3},
    baseline_impl="peft_lora")
CONTRACT = LORA_CONTRACT
