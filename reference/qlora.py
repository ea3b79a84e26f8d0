"""QLoRA (Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs"; seed section 3.2): LoRA over a frozen
base stored in NF4, y = x·ŵᵀ + scaling·(x·Aᵀ)·Bᵀ with ŵ the dequantized NF4 weight (bitsandbytes' format,
with or without double quantization). The contract `qlora`: the base enters only as its NF4State, so an impl is held to
the exact dequantized values (the float64 stick multiplies by them) and never to the unquantized weight."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from llmopt.reference.contract import WHEN_SET, Call, Contract, Cost, Property, drawing, dtype_of, place_x
from llmopt.reference.lora import (
    LAYOUTS,
    AdapterSpec,
    LoraCase,
    backward_after_in_place_updates,
    check_low_rank,
    check_scaling,
    check_tensors,
    deterministic,
    follows_in_place_updates,
    grads_match_reference,
    has_backward,
    lora_cost,
    lora_linear,
    matches_reference,
    no_input_mutation,
    place_weight,
    random_adapter,
    random_tensor,
    term_magnitudes,
    zero_update_is_the_base,
)
from llmopt.reference.nf4 import (
    nf4_dequantize,
    nf4_matmul_stored_bytes,
    nf4_quantize,
    random_weight,
    state_layout_error,
)
from llmopt.reference.nf4_format import NF4State

# --------------------------------------------------------------------------------------------------- the reference


def qlora_linear(x, state, A, B, *, scaling):
    """x (..., in), state: NF4State of the frozen (out, in) base, A (r, in), B (out, r) -> (..., out) =
    x·ŵᵀ + scaling·(x·Aᵀ)·Bᵀ, ŵ dequantized to x's dtype (float64: the exact float32 values).
    r = 0: x·ŵᵀ."""
    return lora_linear(x, nf4_dequantize(state, x.dtype), A, B, scaling=scaling)


# --------------------------------------------------------------------------------------------------- the signature


def check_qlora_call(call: Call) -> None:
    """ValueError naming the layout unless the call is qlora(x, state, A, B, *, scaling) with state an NF4State of an
    (out, in) weight in bitsandbytes' layout dequantizing to x's dtype, x (..., in), A (r, in), B (out, r)."""
    layout = "x (..., in), state: NF4State of the (out, in) base, A (r, in), B (out, r)"
    if len(call.args) != 4:
        raise ValueError(f"qlora takes (x, state, A, B, *, scaling), got {len(call.args)} positional arguments")
    check_scaling(call, "qlora")
    x, state, A, B = call.args
    x = check_tensors({"x": x, "A": A, "B": B}, layout)
    if not isinstance(state, NF4State) or len(state.shape) != 2:
        raise ValueError(f"state must be an NF4State of an (out, in) weight: expected {layout}; got "
                         f"{type(state).__name__} {getattr(state, 'shape', '')}")
    if state.dtype != x.dtype:
        raise ValueError(f"the state dequantizes to {state.dtype}, x is {x.dtype}: expected the same dtype")
    problem = state_layout_error(state, state.shape, state.dtype, state.blocksize, state.double_quant, x.device)
    if problem:
        raise ValueError(f"state is not in bitsandbytes' NF4 layout on x's device: {problem}")
    check_low_rank(x, A, B, state.shape[0], state.shape[1], layout)


# --------------------------------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class QLoraCase:
    """LoRA's case (lora.LoraCase) with the base N(0, 1/n_in) quantized to NF4 (blocks of `blocksize`); `layout`
    places x and the output gradient (contract.place_x: "strided", "sliced") and A and B (lora.place_weight: slices of
    fused adapters); `frozen` as in LoraCase."""

    batch: tuple
    n_in: int
    n_out: int
    rank: int
    scaling: float = 2.0
    dtype: str = "bfloat16"
    x_requires_grad: bool = False
    double_quant: bool = False
    blocksize: int = 64
    b_scale: float = 1.0
    layout: str = field(default="contiguous", metadata=WHEN_SET)
    frozen: str = field(default="", metadata=WHEN_SET)
    seed: int = 0


def qlora_features(case: QLoraCase) -> set[str]:
    needs = {"double_quant"} if case.double_quant else set()
    if case.layout != "contiguous":
        needs.add("strided")
    if case.n_out > 1 and case.n_in % case.blocksize:
        needs.add("k_not_multiple_of_blocksize")
    return needs


def qlora_make_call(case: QLoraCase, device: str) -> Call:
    dtype = dtype_of(case.dtype)
    W = random_weight(case.n_out, case.n_in, "normal", case.n_in**-0.5, case.seed, device).to(dtype=dtype)
    state = nf4_quantize(W, blocksize=case.blocksize, double_quant=case.double_quant)
    gen = torch.Generator().manual_seed(case.seed + 1)
    x = place_x(random_tensor(gen, *case.batch, case.n_in), case.layout, dtype, device)
    A, B = (place_weight(t, case.layout, dtype, device) for t in random_adapter(gen, case, dtype, device))
    return Call((x, state, A, B), {"scaling": case.scaling})


def qlora_cases(impl, mode: str):
    from hypothesis import strategies as st

    on, _, dtypes = drawing(impl, mode)

    @st.composite
    def build(draw):
        blocksize = draw(st.sampled_from([64, 64, 32, 128, 256]))
        n_in = blocksize * draw(st.sampled_from([1, 2]))
        if on("k_not_multiple_of_blocksize") and draw(st.booleans()):
            n_in = draw(st.sampled_from([1, 3, 33, 100]))
        return QLoraCase(
            batch=draw(st.sampled_from([(1,), (3,), (16,), (2, 5)])), n_in=n_in,
            n_out=draw(st.sampled_from([1, 5, 16, 64])), rank=draw(st.sampled_from([0, 1, 8, 16])),
            scaling=draw(st.sampled_from([2.0, 0.5, 0.3])), dtype=draw(st.sampled_from(dtypes)),
            x_requires_grad=draw(st.booleans()), double_quant=draw(st.booleans()) if on("double_quant") else False,
            blocksize=blocksize, b_scale=draw(st.sampled_from([1.0, 0.01, 0.0])),
            layout=draw(st.sampled_from(LAYOUTS if on("strided") else ("contiguous",))),
            frozen=draw(st.sampled_from(["", "", "A", "B"])), seed=draw(st.integers(0, 2**16)))

    return build().filter(lambda case: QLORA_CONTRACT.unsupported(case, impl.supports) is None)


QLORA_EXAMPLES = [
    QLoraCase((3,), 128, 40, 8, 2.0, "bfloat16", x_requires_grad=True, double_quant=True, seed=1),
    QLoraCase((2, 5), 64, 16, 16, 0.5, "float16", seed=2),
    QLoraCase((16,), 64, 64, 1, 2.0, "float32", x_requires_grad=True, seed=3),
    QLoraCase((1,), 64, 5, 0, 1.0, "float32", seed=4),
    # two double-quantization groups (512 blocks of 64, 2 scales) under 40 tokens; a short last block (165 elements)
    QLoraCase((40,), 512, 64, 4, 1.0, "float32", double_quant=True, seed=5),
    QLoraCase((2,), 33, 5, 2, 2.0, "float32", x_requires_grad=True, seed=6),
    # 32 tokens, 96 outputs, rank 20, blocks of 128, double quantization, a scaling no 16-bit type holds; x of (in,)
    QLoraCase((32,), 128, 96, 20, 0.3, "float32", x_requires_grad=True, double_quant=True, blocksize=128, seed=7),
    QLoraCase((), 64, 16, 4, 0.3, "float32", x_requires_grad=True, seed=8),
    # 100 tokens (a partial last tile of tokens); the adapter at initialization (B = 0, yet A and B train)
    QLoraCase((100,), 64, 24, 8, 2.0, "float32", x_requires_grad=True, seed=9),
    QLoraCase((4,), 64, 16, 8, 2.0, "float32", x_requires_grad=True, b_scale=0.0, seed=10),
    # x a slice of a wider hidden state, A and B slices of fused adapters: every other column (A and B stored
    # transposed); a column block (unit column stride)
    QLoraCase((2, 3), 64, 16, 8, 2.0, "float16", x_requires_grad=True, layout="strided", seed=11),
    QLoraCase((5,), 128, 24, 8, 2.0, "float32", x_requires_grad=True, layout="sliced", seed=12),
    # blocks of 256 (any blocksize the format allows, not a table of the small ones)
    QLoraCase((4,), 512, 16, 8, 0.5, "float16", x_requires_grad=True, blocksize=256, seed=13),
]


def qlora_examples(mode: str) -> list[QLoraCase]:
    return [c for c in QLORA_EXAMPLES if not (mode == "interpret" and c.dtype == "bfloat16")]


# --------------------------------------------------------------------------------------------------- the properties


def qlora_magnitudes(call: Call, dout: torch.Tensor, trained: tuple[int, ...]) -> dict:
    """lora.term_magnitudes with the base dequantized (float64)."""
    x, state, A, B = call.args
    dense = Call((x, nf4_dequantize(state, torch.float64), A, B), call.kwargs)
    return term_magnitudes(lora_linear, dense, dout, trained)


QLORA_SPEC = AdapterSpec(qlora_linear, qlora_make_call, check_qlora_call, trainable=(2, 3),
                         names=("x", "state", "A", "B"), magnitudes=qlora_magnitudes)

QLORA_PROPERTIES = [
    Property("matches_reference", matches_reference(QLORA_SPEC),
             doc="y within 2x the eager error (dequantize, then LoRA in the dtype) of the float64 reference"),
    Property("grads_match_reference", grads_match_reference(QLORA_SPEC), applies=has_backward(QLORA_SPEC),
             doc="only A, B (and x) get gradients, within 2x the eager error; the NF4 state gets none"),
    Property("backward_after_in_place_updates", backward_after_in_place_updates(QLORA_SPEC),
             applies=has_backward(QLORA_SPEC),
             doc="trained inputs changed in place before backward: autograd's error, or the forward's gradients"),
    Property("zero_update_is_the_base", zero_update_is_the_base(
        QLORA_SPEC, lambda call: lambda dtype: nf4_dequantize(call.args[1], dtype)),
        doc="B = 0 gives bitwise the impl's no-adapter output, itself within noise of x·ŵᵀ"),
    Property("deterministic", deterministic(QLORA_SPEC), doc="two calls are bitwise equal"),
    Property("follows_in_place_updates", follows_in_place_updates(QLORA_SPEC),
             doc="after x, the state's tensors, A, B are overwritten in place and the scaling changes, it follows"),
    Property("no_input_mutation", no_input_mutation(QLORA_SPEC), doc="x, the state's tensors, A, B unchanged"),
]


def qlora_cost(case: QLoraCase, mode: str = "fwd") -> Cost:
    """LoRA's FLOPs and bytes (lora_cost: no dW, the base frozen), the NF4 state read instead of a dense W."""
    from llmopt.reference.nf4 import NF4MatmulCase

    M = math.prod(case.batch)
    lora = lora_cost(LoraCase(case.batch, case.n_in, case.n_out, case.rank, case.scaling, case.dtype), mode)
    base = nf4_matmul_stored_bytes(NF4MatmulCase((M,), case.n_out, case.n_in, case.blocksize, case.double_quant))
    return Cost(lora.flops, lora.bytes - dtype_of(case.dtype).itemsize * case.n_out * case.n_in + base)


QLORA_BENCH_CASES = [QLoraCase((tokens,), 4096, 4096, 16, 2.0, "bfloat16", x_requires_grad=True, double_quant=True)
                     for tokens in (16, 512)]
QLORA_QUICK_CASES = [QLoraCase((64,), 512, 512, 16, 2.0, "float32", x_requires_grad=True)]

QLORA_CONTRACT = Contract(
    name="qlora", reference=qlora_linear, validate=check_qlora_call, case_type=QLoraCase, cases=qlora_cases,
    make_call=qlora_make_call, properties=QLORA_PROPERTIES, bench_cases=QLORA_BENCH_CASES,
    quick_cases=QLORA_QUICK_CASES, cost=qlora_cost, features=qlora_features,
    feature_names=("double_quant", "k_not_multiple_of_blocksize", "strided", "backward"), examples=qlora_examples,
    bench_modes=("fwd", "bwd"), examples_budget={"cpu": 8, "interpret": 3})
CONTRACT = QLORA_CONTRACT
