"""DoRA (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation"; seed section 3.3) as peft defines it for an
(out, in) weight: magnitude m (out,), one per output feature, times the direction W0 + scaling·B·A divided by its norm
over the input dimension; y = x·(m ⊙ direction)ᵀ. Variants: the norm detached in the backward (peft, and the
paper's section 4.3: the contract) or differentiated (`dora_linear_undetached`); the merged deployment; peft's
formulation (`dora_linear_peft`: base and adapter outputs scaled apart), which rounds differently."""
from __future__ import annotations

import torch
from llmopt.reference import tolerance
from llmopt.reference.contract import Call, Contract, Cost, Property, dtype_of
from llmopt.reference.lora import (
    AdapterSpec,
    LoraCase,
    backward_after_in_place_updates,
    check_frozen,
    check_low_rank,
    check_scaling,
    check_tensors,
    deterministic,
    follows_in_place_updates,
    grads_match_reference,
    has_backward,
    lora_cases,
    lora_cost,
    lora_features,
    lora_make_call,
    matches_reference,
    merge_equivalence,
    no_input_mutation,
    random_tensor,
    term_magnitudes,
    too_slow_to_interpret,
)

# --------------------------------------------------------------------------------------------------- the reference


def _direction(W0, A, B, scaling):
    """(out, in) V = W0 + scaling·B·A and its (out,) norm over the input dimension."""
    V = W0 + scaling * (B @ A)
    return V, torch.linalg.vector_norm(V, dim=1)


def dora_linear(x, W0, A, B, m, *, scaling):
    """x (..., in), W0 (out, in) frozen, A (r, in), B (out, r), m (out,) -> (..., out) = x·((m / ||V||) ⊙ V)ᵀ with
    V = W0 + scaling·B·A and ||V|| its per-output-feature norm, treated as a constant in the backward (detached), as
    peft does: dA, dB flow through V in the numerator only."""
    V, norm = _direction(W0, A, B, scaling)
    return x @ ((m / norm.detach()).unsqueeze(1) * V).mT


def dora_linear_undetached(x, W0, A, B, m, *, scaling):
    """The same forward with the norm differentiated: dm is unchanged (y is linear in m), but dA and dB gain the
    norm's term: for output feature o, d||V_o|| / dV_o = V_o / ||V_o||, so the gradient of V_o loses its component
    along V_o (it is projected onto the sphere's tangent). The paper's section 4.3 (and peft) detach it to save the
    memory of that term; the two differ by O(|dA|) whenever B ≠ 0 or A is trained, never in the forward."""
    V, norm = _direction(W0, A, B, scaling)
    return x @ ((m / norm).unsqueeze(1) * V).mT


def dora_linear_peft(x, W0, A, B, m, *, scaling):
    """The same function as peft computes it, never forming the merged weight: the base output x·W0ᵀ plus
    (m / ||V|| - 1) times itself plus m / ||V|| times the adapter's output; equal to dora_linear in exact arithmetic,
    it rounds three terms of up to |x·W0ᵀ| each, so in half precision its error is the larger of the two and sets the
    noise a DoRA impl is allowed (DORA_SPEC.formulations)."""
    scale = m / _direction(W0, A, B, scaling)[1].detach()
    base = x @ W0.mT
    return base + ((scale - 1) * base + scale * ((x @ A.mT) @ B.mT) * scaling)


def dora_weight(W0, A, B, m, *, scaling):
    """(out, in): the merged weight (m / ||V||) ⊙ V, what a merged deployment multiplies by."""
    V, norm = _direction(W0, A, B, scaling)
    return (m / norm).unsqueeze(1) * V


def initial_magnitude(W0):
    """(out,) m at initialization: ||W0|| over the input dimension (with B = 0 the weight is W0 again)."""
    return torch.linalg.vector_norm(W0, dim=1)


# --------------------------------------------------------------------------------------------------- the signature


def check_dora_call(call: Call) -> None:
    """ValueError naming the layout unless the call is dora(x, W0, A, B, m, *, scaling) with x (..., in), W0 (out, in)
    frozen, A (r, in), B (out, r), m (out,), one floating dtype and device, scaling a finite number."""
    layout = "x (..., in), W0 (out, in) with requires_grad=False, A (r, in), B (out, r), m (out,)"
    if len(call.args) != 5:
        raise ValueError(f"dora takes (x, W0, A, B, m, *, scaling), got {len(call.args)} positional arguments")
    check_scaling(call, "dora")
    x, W0, A, B, m = call.args
    check_tensors({"x": x, "W0": W0, "A": A, "B": B, "m": m}, layout)
    if W0.dim() != 2 or 0 in W0.shape:
        raise ValueError(f"W0 must be a non-empty (out, in) matrix: expected {layout}; got {tuple(W0.shape)}")
    check_frozen("W0", W0)
    check_low_rank(x, A, B, W0.shape[0], W0.shape[1], layout)
    if m.shape != (W0.shape[0],):
        raise ValueError(f"m must be (out,) = ({W0.shape[0]},), one magnitude per output feature: expected {layout}; "
                         f"got {tuple(m.shape)}")


# --------------------------------------------------------------------------------------------------- the cases


def dora_make_call(case: LoraCase, device: str) -> Call:
    """LoRA's inputs plus a trained magnitude: m = ||W0|| (1 + N(0, 0.1^2)) per output feature, and, with three
    features or more, one of them trained to 0 (a pruned feature) and one to a negative magnitude: m is any real
    vector, and an impl must not divide by it."""
    x, W0, A, B = lora_make_call(case, device).args
    gen = torch.Generator().manual_seed(case.seed + 104729)
    m = initial_magnitude(W0.double()) * (1 + random_tensor(gen, case.n_out, std=0.1).to(device))
    if case.n_out >= 3:
        zeroed, negated = torch.randperm(case.n_out, generator=gen)[:2].tolist()
        m[zeroed] = 0.0
        m[negated] = -m[negated]
    return Call((x, W0, A, B, m.to(W0.dtype)), {"scaling": case.scaling})


def dora_cases(impl, mode: str):
    return lora_cases(impl, mode).filter(lambda case: DORA_CONTRACT.unsupported(case, impl.supports) is None)


DORA_EXAMPLES = [
    LoraCase((3,), 33, 40, 8, 2.0, "float32", x_requires_grad=True, seed=11),
    LoraCase((2, 5), 64, 16, 16, 0.5, "float16", layout="strided", seed=12),
    LoraCase((16,), 16, 64, 1, 2.0, "bfloat16", x_requires_grad=True, seed=13),
    LoraCase((1,), 7, 5, 0, 1.0, "float32", seed=14),
    # a square weight (a transposed update or per-column scale is the same shape) and each dimension past 128
    LoraCase((4,), 24, 24, 8, 2.0, "float32", x_requires_grad=True, seed=15),
    LoraCase((3,), 24, 160, 4, 1.0, "float32", x_requires_grad=True, seed=16),
    LoraCase((2,), 160, 24, 4, 1.0, "float32", x_requires_grad=True, seed=17),
    LoraCase((200,), 272, 24, 40, 0.3, "float32", x_requires_grad=True, layout="strided", seed=18),
    LoraCase((), 24, 16, 4, 0.3, "float32", x_requires_grad=True, seed=19),
    # at initialization (B = 0: the base, yet A, B and m train); three batch dimensions, column blocks of wider
    # buffers; float64
    LoraCase((5,), 33, 40, 8, 2.0, "float32", x_requires_grad=True, b_scale=0.0, seed=20),
    LoraCase((2, 3, 2), 40, 24, 8, 2.0, "float32", x_requires_grad=True, layout="sliced", seed=21),
    LoraCase((3,), 48, 20, 8, 2.0, "float64", x_requires_grad=True, seed=22),
    # A and B frozen (m and x still train); scaling 0 (lora_alpha 0: V = W0, A and B get zero gradients)
    LoraCase((4,), 24, 33, 8, 2.0, "float16", x_requires_grad=True, frozen="AB", seed=23),
    LoraCase((3,), 24, 16, 4, 0.0, "float32", x_requires_grad=True, seed=24),
    # a training batch of 2 x 1024 tokens (a path taken only past some token count must still train)
    LoraCase((2, 1024), 24, 16, 4, 2.0, "float32", x_requires_grad=True, seed=25),
]


def dora_examples(mode: str) -> list[LoraCase]:
    return [c for c in DORA_EXAMPLES if not (mode == "interpret" and too_slow_to_interpret(c))]


# --------------------------------------------------------------------------------------------------- the properties

def dora_magnitudes(call: Call, dout: torch.Tensor, trained: tuple[int, ...]) -> dict:
    """Term magnitudes (lora.term_magnitudes) of y = x·((m / ||V||) ⊙ (W0 + scaling·B·A))ᵀ with ||V|| held at its
    true value: a formulation that does not form V first (peft's: base and adapter outputs scaled separately by
    m / ||V||) rounds at the scale of the two contributions, which cancel when the adapter opposes W0."""
    norm = _direction(*call.args[1:4], call.kwargs["scaling"])[1]

    def with_true_norm(x, W0, A, B, m, *, scaling):
        return x @ ((m / norm).unsqueeze(1) * (W0 + scaling * (B @ A))).mT

    return term_magnitudes(with_true_norm, call, dout, trained)


DORA_SPEC = AdapterSpec(dora_linear, dora_make_call, check_dora_call, trainable=(2, 3, 4),
                        names=("x", "W0", "A", "B", "m"), magnitudes=dora_magnitudes,
                        formulations=(dora_linear_peft,))


def equals_base_at_init(impl, case, device):
    """At initialization (B = 0, m = ||W0|| rounded to the dtype) the output is x·W0ᵀ within the noise of the
    reference DoRA computed in the dtype."""
    x, W0, A, B, _ = dora_make_call(case, device).args
    call = Call((x, W0, A, torch.zeros_like(B), initial_magnitude(W0.double()).to(W0.dtype)), {"scaling": case.scaling})
    check_dora_call(call)
    out = impl.fn(*call.args, **call.kwargs)
    return tolerance.noise_relative("output at initialization vs x·W0ᵀ", out, x.double() @ W0.double().mT,
                                    dora_linear(*call.args, **call.kwargs), dtype_of(case.dtype))


def _merged_linear(impl, call: Call, weight: torch.Tensor):
    """The merged deployment: a plain linear layer with the merged weight."""
    return torch.nn.functional.linear(call.args[0], weight)


DORA_PROPERTIES = [
    Property("matches_reference", matches_reference(DORA_SPEC),
             doc="y within 2x the eager low-precision error of the float64 reference"),
    Property("grads_match_reference", grads_match_reference(DORA_SPEC), applies=has_backward(DORA_SPEC),
             doc="only A, B, m (and x) get gradients, the norm detached as peft does; W0.grad stays None; the backward "
                 "leaves its inputs and dy as they were, and a second one agrees"),
    Property("backward_after_in_place_updates", backward_after_in_place_updates(DORA_SPEC),
             applies=has_backward(DORA_SPEC),
             doc="trained inputs changed in place before backward: autograd's error, or the forward's gradients"),
    Property("equals_base_at_init", equals_base_at_init, doc="B = 0, m = ||W0||: the output is x·W0ᵀ within noise"),
    Property("merge_equivalence", merge_equivalence(
        DORA_SPEC, lambda c: dora_weight(*c.args[1:], **c.kwargs), _merged_linear),
        doc="adapter output vs a linear layer with the merged weight (m / ||V||) ⊙ V, within both noises"),
    Property("deterministic", deterministic(DORA_SPEC), doc="two calls are bitwise equal"),
    Property("follows_in_place_updates", follows_in_place_updates(DORA_SPEC),
             doc="after x, W0, A, B, m are overwritten in place and the scaling changes, the output follows"),
    Property("no_input_mutation", no_input_mutation(DORA_SPEC), doc="x, W0, A, B, m and their buffers unchanged"),
]


def dora_cost(case: LoraCase, mode: str = "fwd") -> Cost:
    """LoRA's cost (lora_cost: W0 frozen, no dW0); the forward also forms and normalizes V = W0 + s B A (out x in:
    2 r out in + 3 out in FLOPs, W0 read once more). The backward adds nothing of that size: the norm is detached, so
    A and B get LoRA's gradients scaled per output row (and m an O(tokens x out) one)."""
    lora = lora_cost(case, mode)
    if mode != "fwd":
        return lora
    direction_flops = (2 * case.rank + 3) * case.n_out * case.n_in
    w0_and_m_bytes = dtype_of(case.dtype).itemsize * (case.n_out * case.n_in + case.n_out)
    return Cost(lora.flops + direction_flops, lora.bytes + w0_and_m_bytes)


DORA_BENCH_CASES = [LoraCase((tokens,), 4096, 4096, 16, 2.0, "bfloat16", x_requires_grad=True) for tokens in (16, 512)]
DORA_QUICK_CASES = [LoraCase((64,), 512, 512, 16, 2.0, "float32", x_requires_grad=True)]

DORA_CONTRACT = Contract(
    name="dora", reference=dora_linear, validate=check_dora_call, case_type=LoraCase, cases=dora_cases,
    make_call=dora_make_call, properties=DORA_PROPERTIES, bench_cases=DORA_BENCH_CASES, quick_cases=DORA_QUICK_CASES,
    cost=dora_cost, features=lora_features, feature_names=("strided", "backward"), examples=dora_examples,
    bench_modes=("fwd", "bwd"), frozen_args=(1,), examples_budget={"cpu": 10, "interpret": 3})
CONTRACT = DORA_CONTRACT
