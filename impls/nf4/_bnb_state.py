"""NF4State <-> bitsandbytes' (packed codes, QuantState): one layout, bitsandbytes keeping the packed bytes as
(bytes, 1) and the double-quantized absmax in a nested QuantState (absmax codes, per-256 scales in state2, the mean
as offset). Imports bitsandbytes only when called."""
from __future__ import annotations

import torch
from llmopt.reference.nf4_format import DQ_BLOCKSIZE, NF4State


def to_bitsandbytes(state: NF4State):
    """(packed (bytes, 1) uint8, QuantState) of `state`, on its device."""
    import bitsandbytes.functional as F

    device = state.codes.device
    nested = None
    if state.double_quant:
        nested = F.QuantState(absmax=state.absmax_scales, code=F.create_dynamic_map().to(device),
                              blocksize=DQ_BLOCKSIZE, dtype=torch.float32)
    quant_state = F.QuantState(absmax=state.absmax, shape=torch.Size(state.shape),
                               code=F.get_4bit_type("nf4", device=device), blocksize=state.blocksize, quant_type="nf4",
                               dtype=state.dtype, offset=state.absmax_offset, state2=nested)
    return state.codes.view(-1, 1), quant_state


def from_bitsandbytes(packed: torch.Tensor, quant_state) -> NF4State:
    """The NF4State of bitsandbytes' quantize_4bit(..., quant_type="nf4") output."""
    if quant_state.quant_type != "nf4":
        raise ValueError(f"expected an nf4 QuantState, got {quant_state.quant_type!r}")
    nested = quant_state.state2 if quant_state.nested else None
    return NF4State(packed.view(torch.uint8).reshape(-1), quant_state.absmax, tuple(quant_state.shape),
                    quant_state.dtype, quant_state.blocksize,
                    None if nested is None else nested.absmax, None if nested is None else quant_state.offset)
