"""Correct NF4 codecs held to the contract as user kernels: the reference, and codecs written the way bitsandbytes'
CUDA build decides (reciprocal of the absmax, then `x > threshold` comparisons counted, no bucketize), with the
reciprocal clamped, or not, as bitsandbytes: an all-zero block (or a double-quantization block whose absmax all equal
their mean) then divides 0 by 0 and every element takes code 0, which decodes to the same 0 (or the same mean)."""
import torch
from llmopt.reference.nf4 import nf4
from llmopt.reference.nf4_format import DQ_BLOCKSIZE, NF4State, dynamic_table, nf4_table


def reference(w, *, blocksize=64, double_quant=False):
    return nf4(w, blocksize=blocksize, double_quant=double_quant)


def _count_above(normalized, table):
    thresholds = (table[:-1] + table[1:]) / 2
    return (normalized[:, None] > thresholds[None, :]).sum(1)


def _blockwise(values, blocksize, table, clamp):
    """(codes, absmax) of values (n,) in blocks of `blocksize`; without `clamp`, the codes of a zero block are 0."""
    n = values.numel()
    blocks = torch.nn.functional.pad(values, (0, -n % blocksize)).reshape(-1, blocksize)
    absmax = blocks.abs().amax(1)
    reciprocal = 1.0 / (absmax.clamp(min=torch.finfo(torch.float32).tiny) if clamp else absmax)
    return _count_above((blocks * reciprocal[:, None]).reshape(-1)[:n], table), absmax


def comparison_tree(w, *, blocksize=64, double_quant=False):
    return _comparison_codec(w, blocksize, double_quant, clamp=True)


def unclamped_reciprocal(w, *, blocksize=64, double_quant=False):
    return _comparison_codec(w, blocksize, double_quant, clamp=False)


def _comparison_codec(w, blocksize, double_quant, clamp):
    flat = w.reshape(-1).float()
    codes, absmax = _blockwise(flat, blocksize, nf4_table(), clamp)
    padded = torch.nn.functional.pad(codes, (0, codes.numel() % 2), value=7)
    state = NF4State(((padded[0::2] << 4) | padded[1::2]).to(torch.uint8), absmax, tuple(w.shape), w.dtype, blocksize)
    absmax_hat = absmax
    if double_quant:
        offset = absmax.mean()
        absmax_codes, scales = _blockwise(absmax - offset, DQ_BLOCKSIZE, dynamic_table(), clamp)
        state = NF4State(state.codes, absmax_codes.to(torch.uint8), state.shape, w.dtype, blocksize, scales, offset)
        absmax_hat = dynamic_table()[absmax_codes] * scales.repeat_interleave(DQ_BLOCKSIZE)[:absmax.numel()] + offset
    values = nf4_table()[codes] * absmax_hat.repeat_interleave(blocksize)[:codes.numel()]
    return state, values.to(w.dtype).reshape(w.shape)
