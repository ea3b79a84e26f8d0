"""Known-wrong QLoRA layers, each with one classic bug; `llmopt verify qlora --impl FILE:FUNC` must reject every one."""
import torch
from llmopt.reference.nf4_format import DQ_BLOCKSIZE, dynamic_table, nf4_table


def _block_absmax(state, *, absmax_codes_as_scales=False, first_scale_only=False):
    """(blocks,) float32 absmax of each block, double-quantized ones decoded (one bug switched on by a keyword)."""
    if not state.double_quant or absmax_codes_as_scales:
        return state.absmax.float()
    per_block = (state.absmax_scales[0] if first_scale_only
                 else state.absmax_scales.repeat_interleave(DQ_BLOCKSIZE)[:state.blocks])
    return dynamic_table()[state.absmax.long()] * per_block + state.absmax_offset


def _dequantize(state, dtype, *, absmax=None, block=None, **bug):
    """ŵ (out, in) in dtype: each element's level times its block's absmax (`absmax` and the element's `block` index
    replaceable, or a _block_absmax bug)."""
    absmax = _block_absmax(state, **bug) if absmax is None else absmax
    block = torch.arange(state.numel) // state.blocksize if block is None else block
    codes = torch.stack([state.codes.long() >> 4, state.codes.long() & 15], 1).reshape(-1)[:state.numel]
    return (nf4_table()[codes] * absmax[block]).to(dtype).reshape(state.shape)


def absmax_codes_as_scales(x, state, A, B, *, scaling):
    """Uses the stored absmax tensor as the block scales even when it holds 8-bit double-quantization codes."""
    return x @ _dequantize(state, x.dtype, absmax_codes_as_scales=True).mT + scaling * ((x @ A.mT) @ B.mT)


def lora_a_frozen(x, state, A, B, *, scaling):
    """Detaches A (lora_A accidentally frozen): A receives no gradient."""
    return x @ _dequantize(state, x.dtype).mT + scaling * ((x @ A.detach().mT) @ B.mT)


def base_split_when_adapted(x, state, A, B, *, scaling):
    """When an adapter is present, sums the base product over two halves of the input dimension, each rounded to the
    dtype (a split-K GEMM fused with the adapter); without one, one product: B = 0 no longer gives the base model's
    output bit for bit."""
    weight = _dequantize(state, x.dtype)
    if A.shape[0] == 0 or weight.shape[1] < 2:
        return x @ weight.mT
    half = weight.shape[1] // 2
    base = x[..., :half] @ weight[:, :half].mT + x[..., half:] @ weight[:, half:].mT
    return base + scaling * ((x @ A.mT) @ B.mT)


def dropout_left_on(x, state, A, B, *, scaling):
    """Applies LoRA dropout (p = 0.1, training mode) to the adapter's input: random outputs."""
    dropped = torch.nn.functional.dropout(x, 0.1, training=True)
    return x @ _dequantize(state, x.dtype).mT + scaling * ((dropped @ A.mT) @ B.mT)


def folds_scaling_into_x(x, state, A, B, *, scaling):
    """Multiplies x by scaling in place for the adapter path and divides it back: x is not restored bit for bit."""
    base = x @ _dequantize(state, x.dtype).mT
    with torch.no_grad():
        x.mul_(scaling * 1.37)
    update = ((x @ A.mT) @ B.mT) / 1.37
    with torch.no_grad():
        x.div_(scaling * 1.37)
    return base + update


def first_double_quant_scale_only(x, state, A, B, *, scaling):
    """Decodes every double-quantized absmax with the first group's scale (a kernel that loads the scale once, outside
    its loop over blocks): right while the weight has at most 256 blocks of 64, one group."""
    return x @ _dequantize(state, x.dtype, first_scale_only=True).mT + scaling * ((x @ A.mT) @ B.mT)


def short_last_block_takes_the_previous_absmax(x, state, A, B, *, scaling):
    """Counts whole blocks only (numel // blocksize), so the elements of a short last block take the absmax of the
    block before: right whenever the weight's size is a multiple of the block."""
    whole = max(state.numel // state.blocksize, 1)
    block = (torch.arange(state.numel) // state.blocksize).clamp(max=whole - 1)
    return x @ _dequantize(state, x.dtype, block=block).mT + scaling * ((x @ A.mT) @ B.mT)


_DEQUANTIZED: dict = {}


def dequantized_base_kept_by_address(x, state, A, B, *, scaling):
    """Dequantizes the NF4 base once per address of its codes and reuses it: stale once new weights are loaded into
    the same buffers (or the allocator hands a new state the freed address)."""
    key = (state.codes.data_ptr(), state.shape, x.dtype)
    if key not in _DEQUANTIZED:
        _DEQUANTIZED[key] = _dequantize(state, x.dtype)
    return x @ _DEQUANTIZED[key].mT + scaling * ((x @ A.mT) @ B.mT)


def many_tokens_drop_the_offset(x, state, A, B, *, scaling):
    """Two base paths, as bitsandbytes has (a GEMV for few tokens, dequantize and GEMM for many); the second, past 16
    tokens, decodes double-quantized absmax without adding back their mean offset."""
    absmax = _block_absmax(state)
    if state.double_quant and x.numel() // x.shape[-1] > 16:
        absmax = absmax - state.absmax_offset
    return x @ _dequantize(state, x.dtype, absmax=absmax).mT + scaling * ((x @ A.mT) @ B.mT)


_OUTPUTS: dict = {}


def output_in_one_buffer(x, state, A, B, *, scaling):
    """Writes every result into one preallocated output per shape when nothing trains (an inference runner's static
    output): a later call overwrites what an earlier one returned."""
    out = x @ _dequantize(state, x.dtype).mT + scaling * ((x @ A.mT) @ B.mT)
    if out.requires_grad:
        return out
    return _OUTPUTS.setdefault((tuple(x.shape), state.shape, x.dtype), torch.empty_like(out)).copy_(out)


def x_read_as_dense_rows(x, state, A, B, *, scaling):
    """Reads x from its storage as dense rows (a kernel handed x.data_ptr() and the shape only): wrong for a slice of a
    wider hidden state."""
    dense = torch.as_strided(x, x.shape, torch.empty(x.shape).stride(), x.storage_offset())
    return dense @ _dequantize(state, x.dtype).mT + scaling * ((dense @ A.mT) @ B.mT)


def adapter_read_as_dense_rows(x, state, A, B, *, scaling):
    """Reads A and B from their storage as dense rows (a kernel handed data pointers and shapes only): wrong for a
    slice of a fused adapter or a transposed one."""
    A, B = (torch.as_strided(t, t.shape, (t.shape[1], 1), t.storage_offset()) for t in (A, B))
    return x @ _dequantize(state, x.dtype).mT + scaling * ((x @ A.mT) @ B.mT)


def many_tokens_first_double_quant_scale(x, state, A, B, *, scaling):
    """Past 8 tokens, a batched base path decodes every double-quantized absmax with the first group's scale: right
    for few tokens, or for weights of at most 256 blocks."""
    many = x.numel() // x.shape[-1] > 8
    return x @ _dequantize(state, x.dtype, first_scale_only=many).mT + scaling * ((x @ A.mT) @ B.mT)


def _qlora(x, state, A, B, scaling):
    """The layer by hand: x·ŵᵀ + scaling·(x·Aᵀ)·Bᵀ."""
    return x @ _dequantize(state, x.dtype).mT + scaling * ((x @ A.mT) @ B.mT)


class _RecomputedFromCtx(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, state, A, B, scaling):
        ctx.inputs, ctx.scaling = (x, state, A, B), scaling  # kept as attributes: autograd checks no versions
        return _qlora(x, state, A, B, scaling)

    @staticmethod
    def backward(ctx, dy):
        x, state, A, B = ctx.inputs
        leaves = [t.detach().requires_grad_(t.requires_grad) for t in (x, A, B)]
        with torch.enable_grad():
            out = _qlora(leaves[0], state, leaves[1], leaves[2], ctx.scaling)
        trained = [t for t in leaves if t.requires_grad]
        grads = iter(torch.autograd.grad(out, trained, dy, allow_unused=True))
        dx, dA, dB = (next(grads) if t.requires_grad else None for t in leaves)
        return dx, None, dA, dB, None


def recomputes_from_inputs_on_ctx(x, state, A, B, *, scaling):
    """Recomputes the layer in its backward from inputs kept as ctx attributes (checkpointing without
    save_for_backward; gradients right when nothing changes): after an optimizer step between forward and backward it
    differentiates the new values."""
    return _RecomputedFromCtx.apply(x, state, A, B, scaling)
