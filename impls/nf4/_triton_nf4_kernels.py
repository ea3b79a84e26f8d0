"""NF4 quantization and dequantization in Triton, bit-exact to bitsandbytes' format (QLoRA, Dettmers et al. 2023):
absmax per block, x times the IEEE-rounded reciprocal, the nearest of 16 NormalFloat levels (thresholds counted), two
codes per byte high nibble first; double quantization of the absmax (minus its mean, 8-bit dynamic map, blocks of 256,
nearest level by binary search); decoding as level x absmax in float32 (the double-quantized absmax as a product then a
sum, never fused into an FMA), rounded once to the output dtype. The decoding helpers serve the fused NF4 matmul too."""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from llmopt.impls._host import cdiv
from llmopt.reference.nf4_format import DQ_BLOCKSIZE, NF4State, dynamic_table, nf4_table

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_TINY = torch.finfo(torch.float32).tiny
_BLOCKS_PER_PROGRAM = 16  # quantization blocks per program (4 under the interpreter)


@triton.jit
def _reciprocal(absmax, TINY: tl.constexpr):
    """float32 1 / max(absmax, TINY), correctly rounded (bitsandbytes' CPU build; its CUDA build is within 1 ulp)."""
    return tl.math.div_rn(tl.full(absmax.shape, 1.0, tl.float32), tl.maximum(absmax, TINY))


@triton.jit
def _count_below(values, thresholds_ptr, LOG2_LEVELS: tl.constexpr):
    """int32 number of the 2**LOG2_LEVELS - 1 ascending thresholds strictly below each value (the nearest level, ties
    to the lower one), by binary search over the table padded with +inf to 2**LOG2_LEVELS entries."""
    found = tl.zeros(values.shape, dtype=tl.int32)
    for i in tl.static_range(LOG2_LEVELS):
        candidate = found + (1 << (LOG2_LEVELS - 1 - i))
        found = tl.where(tl.load(thresholds_ptr + candidate - 1) < values, candidate, found)
    return found


@triton.jit
def _nf4_quantize_kernel(w_ptr, codes_ptr, absmax_ptr, thresholds_ptr, n, num_blocks,
                         BLOCKSIZE: tl.constexpr, BLOCKS: tl.constexpr, TINY: tl.constexpr):
    """BLOCKS quantization blocks of w (flat, n elements) per program -> their absmax and packed codes."""
    blocks = tl.program_id(0) * BLOCKS + tl.arange(0, BLOCKS)  # [BLOCKS]
    elements = blocks[:, None] * BLOCKSIZE + tl.arange(0, BLOCKSIZE)[None, :]  # [BLOCKS, BLOCKSIZE]
    w = tl.load(w_ptr + elements, mask=elements < n, other=0.0).to(tl.float32)
    absmax = tl.max(tl.abs(w), axis=1)  # [BLOCKS]
    tl.store(absmax_ptr + blocks, absmax, mask=blocks < num_blocks)
    codes = _count_below(w * _reciprocal(absmax, TINY)[:, None], thresholds_ptr, 4)  # [BLOCKS, BLOCKSIZE]
    high, low = tl.split(tl.reshape(codes, (BLOCKS, BLOCKSIZE // 2, 2)))  # [BLOCKS, BLOCKSIZE // 2] each
    pairs = blocks[:, None] * (BLOCKSIZE // 2) + tl.arange(0, BLOCKSIZE // 2)[None, :]
    tl.store(codes_ptr + pairs, ((high << 4) | low).to(tl.uint8), mask=2 * pairs < n)


@triton.jit
def _absmax_quantize_kernel(absmax_ptr, offset_ptr, codes_ptr, scales_ptr, thresholds_ptr, num_blocks,
                            DQ_BLOCKSIZE: tl.constexpr, TINY: tl.constexpr):
    """One double-quantization block per program: absmax - offset, its scale max|.|, 8-bit codes into the dynamic
    map."""
    pid = tl.program_id(0)
    index = pid * DQ_BLOCKSIZE + tl.arange(0, DQ_BLOCKSIZE)  # [DQ_BLOCKSIZE]
    inside = index < num_blocks
    centered = tl.load(absmax_ptr + index, mask=inside, other=0.0) - tl.load(offset_ptr)
    centered = tl.where(inside, centered, 0.0)
    scale = tl.max(tl.abs(centered), axis=0)
    tl.store(scales_ptr + pid, scale)
    codes = _count_below(centered * _reciprocal(scale, TINY), thresholds_ptr, 8)
    tl.store(codes_ptr + index, codes.to(tl.uint8), mask=inside)


@triton.jit
def block_absmax(absmax_ptr, scales_ptr, offset_ptr, dynamic_ptr, blocks, inside, DOUBLE_QUANT: tl.constexpr,
                 DQ_BLOCKSIZE: tl.constexpr):
    """float32 absmax of the quantization blocks `blocks` (any shape; 0 where not `inside`): stored, or with double
    quantization dynamic[code] x scale then + offset (launch with enable_fp_fusion=False for bitsandbytes' two
    roundings)."""
    if DOUBLE_QUANT:
        code = tl.load(absmax_ptr + blocks, mask=inside, other=0).to(tl.int32)
        scale = tl.load(scales_ptr + blocks // DQ_BLOCKSIZE, mask=inside, other=0.0)
        absmax = tl.load(dynamic_ptr + code) * scale + tl.load(offset_ptr)
    else:
        absmax = tl.load(absmax_ptr + blocks, mask=inside, other=0.0)
    return absmax


@triton.jit
def _nf4_dequantize_kernel(codes_ptr, absmax_ptr, scales_ptr, offset_ptr, table_ptr, dynamic_ptr, out_ptr, n,
                           num_blocks, BLOCKSIZE: tl.constexpr, BLOCKS: tl.constexpr, DOUBLE_QUANT: tl.constexpr,
                           DQ_BLOCKSIZE: tl.constexpr):
    """BLOCKS quantization blocks per program -> level x absmax, rounded once to out's dtype."""
    blocks = tl.program_id(0) * BLOCKS + tl.arange(0, BLOCKS)  # [BLOCKS]
    pairs = blocks[:, None] * (BLOCKSIZE // 2) + tl.arange(0, BLOCKSIZE // 2)[None, :]  # [BLOCKS, BLOCKSIZE // 2]
    packed = tl.load(codes_ptr + pairs, mask=2 * pairs < n, other=0).to(tl.int32)
    absmax = block_absmax(absmax_ptr, scales_ptr, offset_ptr, dynamic_ptr, blocks, blocks < num_blocks,
                          DOUBLE_QUANT, DQ_BLOCKSIZE)[:, None]  # [BLOCKS, 1]
    high = tl.load(table_ptr + (packed >> 4)) * absmax
    low = tl.load(table_ptr + (packed & 15)) * absmax
    values = tl.reshape(tl.join(high, low), (BLOCKS, BLOCKSIZE))  # element order: high, low, high, ...
    elements = blocks[:, None] * BLOCKSIZE + tl.arange(0, BLOCKSIZE)[None, :]
    tl.store(out_ptr + elements, values.to(out_ptr.dtype.element_ty), mask=elements < n)


_DEVICE_TABLES: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def device_tables(device) -> tuple[torch.Tensor, torch.Tensor]:
    """(NF4 levels (16,), dynamic map (256,)) float32 on `device`, made once per device."""
    device = torch.device(device)
    if device not in _DEVICE_TABLES:
        _DEVICE_TABLES[device] = (nf4_table(device).clone(), dynamic_table(device).clone())
    return _DEVICE_TABLES[device]


def _thresholds(table: torch.Tensor) -> torch.Tensor:
    """Midpoints of the ascending table in float32, padded with +inf to the table's length."""
    return torch.cat([(table[:-1] + table[1:]) / 2, torch.full((1,), float("inf"), device=table.device)])


def _blocks_per_program() -> int:
    return 4 if _INTERPRET else _BLOCKS_PER_PROGRAM


def quantize(w: torch.Tensor, *, blocksize: int = 64, double_quant: bool = False) -> NF4State:
    """w (any shape, float16/bfloat16/float32) -> NF4State in bitsandbytes' layout."""
    flat = w.contiguous().reshape(-1)
    n, device = flat.numel(), w.device
    num_blocks = -(-n // blocksize)
    codes = torch.empty(-(-n // 2), dtype=torch.uint8, device=device)
    absmax = torch.empty(num_blocks, dtype=torch.float32, device=device)
    per_program = _blocks_per_program()
    _nf4_quantize_kernel[(cdiv(num_blocks, per_program),)](
        flat, codes, absmax, _thresholds(nf4_table(device)), n, num_blocks, BLOCKSIZE=blocksize, BLOCKS=per_program,
        TINY=_TINY)
    state = NF4State(codes, absmax, tuple(w.shape), w.dtype, blocksize)
    if not double_quant:
        return state
    offset = absmax.mean()  # float32, as bitsandbytes takes it
    absmax_codes = torch.empty(num_blocks, dtype=torch.uint8, device=device)
    scales = torch.empty(-(-num_blocks // DQ_BLOCKSIZE), dtype=torch.float32, device=device)
    _absmax_quantize_kernel[(scales.numel(),)](absmax, offset, absmax_codes, scales, _thresholds(dynamic_table(device)),
                                               num_blocks, DQ_BLOCKSIZE=DQ_BLOCKSIZE, TINY=_TINY)
    return NF4State(codes, absmax_codes, tuple(w.shape), w.dtype, blocksize, scales, offset)


def dequantize(state: NF4State) -> torch.Tensor:
    """NF4State -> tensor of state.shape in state.dtype."""
    device = state.codes.device
    out = torch.empty(state.shape, dtype=state.dtype, device=device)
    per_program = _blocks_per_program()
    scales = state.absmax_scales if state.double_quant else state.absmax  # placeholders without double quantization
    offset = state.absmax_offset if state.double_quant else state.absmax
    _nf4_dequantize_kernel[(cdiv(state.blocks, per_program),)](
        state.codes, state.absmax, scales, offset, *device_tables(device), out, state.numel,
        state.blocks, BLOCKSIZE=state.blocksize, BLOCKS=per_program, DOUBLE_QUANT=state.double_quant,
        DQ_BLOCKSIZE=DQ_BLOCKSIZE, enable_fp_fusion=False)
    return out
