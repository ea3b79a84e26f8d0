"""Known-wrong NF4 matmuls, each with one classic bug; `llmopt verify nf4_matmul --impl FILE:FUNC` must reject every
one. Each decodes the state the way a kernel author might and multiplies, with its one mistake."""
import torch
from llmopt.reference.nf4_format import DQ_BLOCKSIZE, dynamic_table, nf4_table


def _absmax(state, offset_used=True):
    if not state.double_quant:
        return state.absmax
    scaled = dynamic_table()[state.absmax.long()] * state.absmax_scales.repeat_interleave(DQ_BLOCKSIZE)[:state.blocks]
    return scaled + state.absmax_offset if offset_used else scaled


def _weight(state, *, low_nibble_first=False, absmax=None, block=None):
    """ŵ (N, K) float32: each element's level times the absmax of its `block` (default: element // blocksize)."""
    n = state.numel
    high, low = state.codes.long() >> 4, state.codes.long() & 15
    codes = torch.stack([low, high] if low_nibble_first else [high, low], 1).reshape(-1)[:n]
    absmax = _absmax(state) if absmax is None else absmax
    block = torch.arange(n) // state.blocksize if block is None else block
    return (nf4_table()[codes] * absmax[block]).reshape(state.shape)


def low_nibble_first(x, state):
    """Decodes the first element of each byte from the low nibble."""
    return (x.float() @ _weight(state, low_nibble_first=True).mT).to(x.dtype)


def forgets_double_quant_offset(x, state):
    """Dequantizes the double-quantized absmax as code × scale, without adding back the mean offset."""
    return (x.float() @ _weight(state, absmax=_absmax(state, offset_used=False)).mT).to(x.dtype)


def absmax_indexed_by_row(x, state):
    """Reads the absmax of element (r, c) at index r instead of (r·K + c) // blocksize."""
    row_block = torch.arange(state.numel) // state.shape[1]  # the block index from the row alone
    return (x.float() @ _weight(state, block=row_block).mT).to(x.dtype)


def half_precision_accumulation(x, state):
    """Dequantizes in float32 but accumulates the dot products in the input's half precision (fp16/bf16) in chunks
    of 16."""
    weight = _weight(state).to(x.dtype)
    out = torch.zeros(*x.shape[:-1], state.shape[0], dtype=x.dtype)
    for k in range(0, x.shape[-1], 16):
        out = out + x[..., k:k + 16] @ weight[:, k:k + 16].mT
    return out


def split_k_random_order(x, state):
    """Sums K in chunks of 16 in a random order, as an atomics-based split-K kernel does: not bitwise repeatable."""
    weight = _weight(state)
    xf = x.float()
    chunks = list(range(0, x.shape[-1], 16))
    out = torch.zeros(*x.shape[:-1], state.shape[0])
    for k in torch.randperm(len(chunks)).tolist():
        start = chunks[k]
        out = out + xf[..., start:start + 16] @ weight[:, start:start + 16].mT
    return out.to(x.dtype)


def rescales_x_in_place(x, state):
    """Divides x in place by a per-row scale to keep it in range, multiplies it back afterwards: x is not restored
    bit for bit."""
    scale = x.abs().amax(-1, keepdim=True).clamp(min=1) * 3
    x.div_(scale)
    out = (x.float() @ _weight(state).mT) * scale.float()
    x.mul_(scale)
    return out.to(x.dtype)


def output_transposed_when_square(x, state):
    """Computes ŵ·xᵀ (rows by tokens, as a kernel tiles it) and transposes back only where the shapes differ: a
    call whose token count equals the weight's rows returns the output transposed."""
    x2 = x.reshape(-1, x.shape[-1]).float()
    rows_by_tokens = _weight(state) @ x2.mT  # (N, M)
    out = rows_by_tokens if rows_by_tokens.shape[0] == rows_by_tokens.shape[1] else rows_by_tokens.mT
    return out.reshape(*x.shape[:-1], state.shape[0]).to(x.dtype)


_SEEN: set = set()


def first_call_sums_in_another_order(x, state):
    """An autotuned kernel whose first call on a shape (while it times its candidates) returns a whole-K sum and whose
    later calls use the chosen split-K tile, adding four spans in reverse: each call right within tolerance, but the
    first differs from the rest."""
    key = (tuple(x.shape), state.shape)
    spans = 4 if key in _SEEN else 1
    _SEEN.add(key)
    w, x2 = _weight(state), x.float()
    step = -(-state.shape[1] // spans)
    out = torch.zeros(*x.shape[:-1], state.shape[0])
    for k0 in reversed(range(0, state.shape[1], step)):
        out = out + x2[..., k0:k0 + step] @ w[:, k0:k0 + step].mT
    return out.to(x.dtype)


_WEIGHTS: dict = {}


def dequantized_weight_kept_by_address(x, state):
    """Dequantizes the weight once per address of its codes and reuses it (a serving path caching ŵ): stale once new
    weights are loaded into the same buffers."""
    key = (state.codes.data_ptr(), state.shape)
    if key not in _WEIGHTS:
        _WEIGHTS[key] = _weight(state)
    return (x.float() @ _WEIGHTS[key].mT).to(x.dtype)


def half_precision_sum_over_k_tiles(x, state):
    """Past K = 256, a 'fast path' for 16-bit x sums its K tiles of 64 in x's dtype (each tile's dot in float32):
    within tolerance at the small K of most tests, drifting past it at the K of a real layer."""
    K = state.shape[1]
    if K <= 256 or x.dtype == torch.float32:
        return (x.float() @ _weight(state).mT).to(x.dtype)
    w = _weight(state).to(x.dtype).float()
    total = torch.zeros(*x.shape[:-1], state.shape[0], dtype=x.dtype)
    for k0 in range(0, K, 64):
        total = total + (x[..., k0:k0 + 64].float() @ w[:, k0:k0 + 64].mT).to(x.dtype)
    return total


def absmax_by_k_tile(x, state):
    """Loads the absmax of each K tile of 128 elements (element // 128), right while a quantization block is at most
    one tile (blocks of 32, 64, 128), wrong for blocks of 256 and more."""
    tile = (torch.arange(state.numel) // 128).clamp(max=state.blocks - 1)
    return (x.float() @ _weight(state, block=tile if state.blocksize >= 256 else None).mT).to(x.dtype)


def vector_x_kept_as_a_row(x, state):
    """Treats x of shape (K,) as a (1, K) matrix and returns the (1, N) result as it is, where (N,) is due."""
    x2 = x.reshape(1, -1) if x.dim() == 1 else x
    return (x2.float() @ _weight(state).mT).to(x.dtype)


_BY_CODES: dict = {}


def weight_cached_on_its_codes(x, state):
    """Caches ŵ under the codes' address and version (reloading the codes in place invalidates it): stale when only
    the absmax or its scales are updated in place."""
    key = (state.codes.data_ptr(), state.codes._version, state.shape)
    if key not in _BY_CODES:
        _BY_CODES[key] = _weight(state)
    return (x.float() @ _BY_CODES[key].mT).to(x.dtype)


def token_tiles_without_a_tail(x, state):
    """Runs whole tiles of 64 tokens and, past 64 tokens, leaves the last partial tile unwritten (zeros)."""
    x2 = x.reshape(-1, x.shape[-1])
    out = (x2.float() @ _weight(state).mT).to(x.dtype)
    if x2.shape[0] > 64:
        out[x2.shape[0] // 64 * 64:] = 0
    return out.reshape(*x.shape[:-1], state.shape[0])


def blocksize_from_a_shift_table(x, state):
    """Finds each element's block with a shift from a table of the blocksizes it was written for (32 to 256, 1024),
    falling back to 64 for any other."""
    shift = {32: 5, 64: 6, 128: 7, 256: 8, 1024: 10}.get(state.blocksize, 6)
    block = (torch.arange(state.numel) >> shift).clamp(max=state.blocks - 1)
    return (x.float() @ _weight(state, block=block).mT).to(x.dtype)


_BY_VERSION: dict = {}


def weight_cached_by_address_and_version(x, state):
    """Caches ŵ under the address and version counter of every state tensor (in-place reloads bump the version and
    invalidate it): stale when new weights are written through .data, which keeps the version."""
    key = tuple((t.data_ptr(), t._version) for t in state.tensors().values()) + (state.shape,)
    if key not in _BY_VERSION:
        _BY_VERSION[key] = _weight(state)
    return (x.float() @ _BY_VERSION[key].mT).to(x.dtype)


_OUTPUTS: dict = {}


def output_in_one_buffer(x, state):
    """Writes every result into one preallocated output per shape (a CUDA-graph runner's static output): a later
    call overwrites what an earlier one returned."""
    out = _OUTPUTS.setdefault((tuple(x.shape), state.shape, x.dtype),
                              torch.empty(*x.shape[:-1], state.shape[0], dtype=x.dtype, device=x.device))
    return out.copy_((x.float() @ _weight(state).mT).to(x.dtype))


def double_quant_scale_once_a_row(x, state):
    """Loads the double-quantization scale once a row, the group of the row's first block, for every block of the row:
    wrong where a group of 256 blocks starts inside a row."""
    if not state.double_quant:
        return (x.float() @ _weight(state).mT).to(x.dtype)
    K = state.shape[1]
    row_start = torch.arange(state.blocks) * state.blocksize // K * K // state.blocksize  # first block of the row
    absmax = dynamic_table()[state.absmax.long()] * state.absmax_scales[row_start // DQ_BLOCKSIZE] + state.absmax_offset
    return (x.float() @ _weight(state, absmax=absmax).mT).to(x.dtype)
