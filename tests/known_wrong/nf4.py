"""Known-wrong NF4 codecs, each with one classic bug; `llmopt verify nf4 --impl FILE:FUNC` must reject every one on CPU.
Each quantizes to the nearest level after dividing by a block absmax and packs two codes per byte, as a plausible
author would, with its one mistake."""
import dataclasses

import torch
from llmopt.reference.nf4_format import DQ_BLOCKSIZE, NF4State, dynamic_table, nf4_table


def _nearest(values, table, top_threshold=None):
    edges = (table[:-1] + table[1:]) / 2
    if top_threshold is not None:
        edges[-1] = top_threshold
    return torch.bucketize(values, edges)


def _codec(w, blocksize, double_quant, *, table=None, low_nibble_first=False, block_of=None, per_row=False,
           decode_in_dtype=False, center_absmax=True, absmax_round_down=False, pad_code=7,
           fused_absmax_decode=False, top_threshold=None, absmax_reach=None, offset_reach=None, memory_order=False,
           shape_as_matrix=False):
    """(NF4State, dequantized w); the keyword arguments switch one bug on."""
    table = nf4_table() if table is None else table
    flat = (torch.as_strided(w, (w.numel(),), (1,), w.storage_offset()) if memory_order else w.reshape(-1)).float()
    shape = (w.shape[0], w.numel() // w.shape[0]) if shape_as_matrix and w.dim() else tuple(w.shape)
    n = flat.numel()
    index = torch.arange(n)
    if per_row:
        block = index // w.shape[-1]
    else:
        block = index // blocksize if block_of is None else block_of(index, blocksize)
    reached = flat.abs() if absmax_reach is None else torch.where(index % blocksize < absmax_reach, flat.abs(), 0)
    absmax = torch.zeros(int(block.max()) + 1).scatter_reduce(0, block, reached, "amax")
    codes = _nearest(flat * (1 / absmax.clamp(min=torch.finfo(torch.float32).tiny))[block], table, top_threshold)
    codes = torch.nn.functional.pad(codes, (0, n % 2), value=pad_code)
    first, second = (codes[1::2], codes[0::2]) if low_nibble_first else (codes[0::2], codes[1::2])
    packed = ((first << 4) | second).to(torch.uint8)
    state = NF4State(packed, absmax, shape, w.dtype, blocksize)
    absmax_used = absmax
    if double_quant:
        offset = absmax[:offset_reach].mean() if center_absmax else torch.zeros(())
        centered = absmax - offset
        dq_block = torch.arange(absmax.numel()) // DQ_BLOCKSIZE
        scales = torch.zeros(int(dq_block.max()) + 1).scatter_reduce(0, dq_block, centered.abs(), "amax")
        normalized = centered * (1 / scales.clamp(min=1e-38))[dq_block]
        absmax_codes = ((torch.bucketize(normalized, dynamic_table(), right=True) - 1).clamp(min=0) if absmax_round_down
                        else _nearest(normalized, dynamic_table()))
        if fused_absmax_decode:  # code value x scale + offset rounded once (a fused multiply-add)
            absmax_used = (dynamic_table()[absmax_codes].double() * scales[dq_block].double() + offset.double()).float()
        else:
            absmax_used = dynamic_table()[absmax_codes] * scales[dq_block] + offset
        state = NF4State(packed, absmax_codes.to(torch.uint8), shape, w.dtype, blocksize, scales, offset)
    high, low = packed.long() >> 4, packed.long() & 15
    decoded = torch.stack([low, high] if low_nibble_first else [high, low], 1).reshape(-1)[:n]
    if decode_in_dtype:
        values = table.to(w.dtype)[decoded] * absmax_used.to(w.dtype)[block]
    else:
        values = (table[decoded] * absmax_used[block]).to(w.dtype)
    return state, values.reshape(shape)


def seed_symmetric_codebook(w, *, blocksize=64, double_quant=False):
    """Uses the seed's levels Φ⁻¹((i + 0.5)/16) scaled to [-1, 1]: symmetric, no exact zero, not bitsandbytes'
    table."""
    quantiles = torch.special.ndtri((torch.arange(16, dtype=torch.float64) + 0.5) / 16)
    return _codec(w, blocksize, double_quant, table=(quantiles / quantiles.max()).float())


def swapped_nibbles(w, *, blocksize=64, double_quant=False):
    """Packs the first element of each pair into the low nibble (and decodes consistently): a private layout."""
    return _codec(w, blocksize, double_quant, low_nibble_first=True)


def absmax_per_row(w, *, blocksize=64, double_quant=False):
    """One absmax per row of the weight instead of one per block of `blocksize` elements."""
    return _codec(w, blocksize, double_quant, per_row=True)


def block_boundary_off_by_one(w, *, blocksize=64, double_quant=False):
    """Starts counting blocks at element 1: the first block holds blocksize - 1 elements, every boundary shifts."""
    return _codec(w, blocksize, double_quant, block_of=lambda index, size: (index + 1) // size)


def dequantizes_in_output_dtype(w, *, blocksize=64, double_quant=False):
    """Decodes as level.to(dtype) × absmax.to(dtype): two roundings in half precision instead of one float32
    product."""
    return _codec(w, blocksize, double_quant, decode_in_dtype=True)


def double_quant_without_mean(w, *, blocksize=64, double_quant=False):
    """Double-quantizes the absmax itself, storing a zero offset, instead of absmax minus its mean."""
    return _codec(w, blocksize, double_quant, center_absmax=False)


def absmax_codes_rounded_down(w, *, blocksize=64, double_quant=False):
    """Double-quantizes each absmax to the dynamic-map level at or below it instead of the nearest level."""
    return _codec(w, blocksize, double_quant, absmax_round_down=True)


def pads_odd_count_with_code_zero(w, *, blocksize=64, double_quant=False):
    """Pads an odd element count's last nibble with 0 (the code of -1.0) instead of bitsandbytes' 7 (0.0): the values
    decode the same, the stored bytes do not."""
    return _codec(w, blocksize, double_quant, pad_code=0)


def double_quant_absmax_fused_decode(w, *, blocksize=64, double_quant=False):
    """Decodes each double-quantized absmax as one fused multiply-add (code value x scale + offset, rounded once)
    where bitsandbytes rounds the product and then the sum: ŵ is an ulp off the decoding of its own state now and
    then."""
    return _codec(w, blocksize, double_quant, fused_absmax_decode=True)


def top_threshold_typed_short(w, *, blocksize=64, double_quant=False):
    """A hand-written decision tree with its top constant typed as 0.86148 (bitsandbytes': 0.8614784479141235): 26
    float32 ulps off, so only values within 1.6e-6 above it take code 14 instead of 15."""
    return _codec(w, blocksize, double_quant, top_threshold=0.86148)


def absmax_over_first_512(w, *, blocksize=64, double_quant=False):
    """Reduces each block's absmax with 256 threads x 2 elements and no loop: blocks of 1024 and more take the max of
    their first 512 elements only, and their larger values clamp to the end codes."""
    return _codec(w, blocksize, double_quant, absmax_reach=512)


def offset_over_first_1024_absmax(w, *, blocksize=64, double_quant=False):
    """Takes the double quantization's mean offset in one block of 1024 threads with no loop: the mean of the first
    1024 absmax, exact only for weights of up to 1024 blocks."""
    return _codec(w, blocksize, double_quant, offset_reach=1024)


def reads_memory_order(w, *, blocksize=64, double_quant=False):
    """Walks w's storage in memory order (a kernel handed the data pointer): a transposed weight (GPT-2's Conv1D
    handed over as .t()) is quantized in the wrong element order."""
    return _codec(w, blocksize, double_quant, memory_order=True)


def shape_recorded_as_matrix(w, *, blocksize=64, double_quant=False):
    """Records the weight as a (rows, numel / rows) matrix (written for nn.Linear): a 1-D or 3-D w's state, and its
    dequantization, come back with another shape."""
    return _codec(w, blocksize, double_quant, shape_as_matrix=True)


def writes_dequantized_back_into_w(w, *, blocksize=64, double_quant=False):
    """Rounds w to ŵ in place (a fake-quantization step): the state and ŵ are right, the caller's weight is not."""
    state, w_hat = _codec(w, blocksize, double_quant)
    with torch.no_grad():
        w.copy_(w_hat)
    return state, w_hat


_STATES: dict = {}


def state_kept_by_address(w, *, blocksize=64, double_quant=False):
    """Quantizes each weight once per address (a loader's cache): stale once new weights are loaded into the same
    buffer."""
    key = (w.data_ptr(), tuple(w.shape), w.stride(), w.dtype, blocksize, double_quant)
    if key not in _STATES:
        _STATES[key] = _codec(w, blocksize, double_quant)
    return _STATES[key]


_BUFFERS: dict = {}


def codes_in_one_buffer(w, *, blocksize=64, double_quant=False):
    """Packs every call's codes into one buffer per shape (an out= argument allocated once): a later call overwrites
    the codes of a state returned earlier."""
    state, w_hat = _codec(w, blocksize, double_quant)
    codes = _BUFFERS.setdefault((tuple(w.shape), w.dtype, blocksize, double_quant), torch.empty_like(state.codes))
    return dataclasses.replace(state, codes=codes.copy_(state.codes)), w_hat
