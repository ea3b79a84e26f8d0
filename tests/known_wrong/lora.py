"""Known-wrong LoRA layers, each with one classic bug; `llmopt verify lora --impl FILE:FUNC` must reject every one on
CPU within the default budget. Written as a plausible layer author would, not from the reference module."""
import functools

import torch


def _lora(x, W, A, B, scaling):
    """The layer as written by hand: x·Wᵀ + scaling·(x·Aᵀ)·Bᵀ."""
    return x @ W.mT + scaling * ((x @ A.mT) @ B.mT)


def _hand_grads(x, W, A, B, dy2, scaling, wants=(True, True, True)):
    """(dx, dA, dB) of the layer written by hand, dy2 the output gradient as (M, out) rows; each only where `wants`
    says (dx, dA, dB)."""
    x2 = x.reshape(-1, x.shape[-1])
    dt = scaling * (dy2 @ B)  # (M, r)
    return ((dy2 @ W + dt @ A).reshape(x.shape) if wants[0] else None, dt.mT @ x2 if wants[1] else None,
            scaling * (dy2.mT @ (x2 @ A.mT)) if wants[2] else None)


class _HandWritten(torch.autograd.Function):
    """The layer with its backward written by hand (_hand_grads); each bug below overrides one step of it."""

    @staticmethod
    def forward(ctx, x, W, A, B, scaling):
        ctx.save_for_backward(x, W, A, B)
        ctx.scaling = scaling
        return _lora(x, W, A, B, scaling)

    @staticmethod
    def backward(ctx, dy):
        x, W, A, B = ctx.saved_tensors
        dx, dA, dB = _hand_grads(x, W, A, B, dy.reshape(-1, dy.shape[-1]), ctx.scaling,
                                 (ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[3]))
        return dx, None, dA, dB, None


def ignores_scaling(x, W, A, B, *, scaling):
    """Adds the update unscaled: x·Wᵀ + (x·Aᵀ)·Bᵀ (alpha / r dropped)."""
    return x @ W.mT + (x @ A.mT) @ B.mT


def base_split_when_adapted(x, W, A, B, *, scaling):
    """When an adapter is present, sums the base product over two halves of the input dimension (as a kernel that
    fuses the adapter into a split-K GEMM would), rounding each half to the dtype; without one, one product. Within
    noise either way, but a zero-initialized adapter (B = 0) no longer reproduces the base model bit for bit."""
    if A.shape[0] == 0 or W.shape[1] < 2:
        return x @ W.mT
    half = W.shape[1] // 2
    base = x[..., :half] @ W[:, :half].mT + x[..., half:] @ W[:, half:].mT
    return base + scaling * ((x @ A.mT) @ B.mT)


def lora_a_frozen(x, W, A, B, *, scaling):
    """Detaches A (lora_A accidentally frozen): A receives no gradient."""
    return x @ W.mT + scaling * ((x @ A.detach().mT) @ B.mT)


def base_blocks_input_grad(x, W, A, B, *, scaling):
    """Detaches x in the base path: dx misses dy·W (breaks backpropagation into earlier layers)."""
    return x.detach() @ W.mT + scaling * ((x @ A.mT) @ B.mT)


def trains_the_base(x, W, A, B, *, scaling):
    """Turns requires_grad on for W (as a forgotten freeze would): the base weight receives gradients."""
    W.requires_grad_(True)
    return _lora(x, W, A, B, scaling)


def dropout_left_on(x, W, A, B, *, scaling):
    """Applies LoRA dropout (p = 0.1, training mode) to the adapter's input at inference: random outputs."""
    return x @ W.mT + scaling * ((torch.nn.functional.dropout(x, 0.1, training=True) @ A.mT) @ B.mT)


def merges_in_place(x, W, A, B, *, scaling):
    """An inference path that merges the update into W in place, multiplies, then subtracts it again: the round trip
    does not restore W bit for bit, so the caller's frozen weight drifts every call."""
    with torch.no_grad():
        W.add_(scaling * (B @ A))
        out = x @ W.mT
        W.sub_(scaling * (B @ A))
    return out


def reads_the_adapter_row_major(x, W, A, B, *, scaling):
    """Reads A and B from their storage as row-major matrices whatever their strides (a kernel indexing A[i, k] at
    i·in + k): right for adapters stored as peft stores them, wrong for a transposed one."""
    A_rows = torch.as_strided(A, A.shape, (A.shape[1], 1), A.storage_offset())
    B_rows = torch.as_strided(B, B.shape, (B.shape[1], 1), B.storage_offset())
    return x @ W.mT + scaling * ((x @ A_rows.mT) @ B_rows.mT)


def update_untransposed_when_square(x, W, A, B, *, scaling):
    """Builds the update ΔW = scaling·B·A and multiplies x by it, transposing only where the shapes demand it: on a
    square weight x·ΔW type-checks and is taken, where x·ΔWᵀ is meant."""
    delta = scaling * (B @ A)  # (out, in)
    return x @ W.mT + (x @ delta if delta.shape[0] == delta.shape[1] else x @ delta.mT)


def expand_tile_without_loop(x, W, A, B, *, scaling):
    """Expands the rank-r activations with one tile of 128 output features and no loop over the rest: outputs past
    128 miss their update (invisible while layers are at most 128 wide)."""
    out = x @ W.mT
    shrunk = scaling * (x @ A.mT)
    return torch.cat([out[..., :128] + shrunk @ B[:128].mT, out[..., 128:]], dim=-1)


class _RowMajorGradLora(_HandWritten):
    """A hand-written backward that reads the output gradient's storage as a row-major (M, out) matrix."""

    @staticmethod
    def backward(ctx, dy):
        x, W, A, B = ctx.saved_tensors
        rows = dy.numel() // W.shape[0]
        dy2 = torch.as_strided(dy, (rows, W.shape[0]), (W.shape[0], 1), dy.storage_offset())  # the bug
        dx, dA, dB = _hand_grads(x, W, A, B, dy2, ctx.scaling, (ctx.needs_input_grad[0], True, True))
        return dx, None, dA, dB, None


def backward_reads_dy_row_major(x, W, A, B, *, scaling):
    """A fused backward that indexes dy as if it were contiguous: right for the gradients autograd usually hands over,
    wrong for a strided one (a transposed or sliced output gradient)."""
    return _RowMajorGradLora.apply(x, W, A, B, scaling)


def flattens_batch_by_its_last_stride(x, W, A, B, *, scaling):
    """Flattens the batch dimensions with as_strided from the last batch stride (a launcher passing one row stride):
    right while the batch collapses to a single stride, wrong for x sliced along a batch dimension."""
    rows = x.numel() // x.shape[-1]
    x2 = torch.as_strided(x, (rows, x.shape[-1]), (x.stride(-2), x.stride(-1)), x.storage_offset())
    return (x2 @ W.mT + scaling * ((x2 @ A.mT) @ B.mT)).reshape(*x.shape[:-1], W.shape[0])


_OUTPUTS: dict = {}


def output_in_one_buffer(x, W, A, B, *, scaling):
    """Without autograd, writes every call's result into one preallocated buffer per shape and returns it (a static
    output buffer, as a CUDA-graph runner keeps): a later call overwrites the result a caller still holds."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, A, B)):
        return _lora(x, W, A, B, scaling)
    key = (*x.shape[:-1], W.shape[0], x.dtype)
    buffer = _OUTPUTS.setdefault(key, torch.empty(*x.shape[:-1], W.shape[0], dtype=x.dtype, device=x.device))
    return buffer.copy_(_lora(x, W, A, B, scaling))


_MERGED: dict = {}


def merged_weight_kept_by_identity(x, W, A, B, *, scaling):
    """At inference, merges W + scaling·B·A once per (W, A, B) object and reuses it: fast, until an optimizer step
    updates A and B in place (or new weights are loaded into W) and the kept merge goes stale."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, A, B)):
        return _lora(x, W, A, B, scaling)
    key = (id(W), id(A), id(B), scaling)
    if key not in _MERGED:
        _MERGED[key] = W + scaling * (B @ A)
    return x @ _MERGED[key].mT


def rank_tile_without_loop(x, W, A, B, *, scaling):
    """Holds the rank in one tile of 32 and never loops over it: ranks up to 32 are right, r = 40 or 64 loses every
    component past 32."""
    return x @ W.mT + scaling * ((x @ A[:32].mT) @ B[:, :32].mT)


def vector_x_kept_as_a_row(x, W, A, B, *, scaling):
    """Flattens x to (M, in) for the kernel and restores the batch only when it had more than two dimensions: x of
    shape (in,) comes back (1, out)."""
    x2 = x.reshape(-1, x.shape[-1])
    out = x2 @ W.mT + scaling * ((x2 @ A.mT) @ B.mT)
    return out.reshape(*x.shape[:-1], W.shape[0]) if x.dim() > 2 else out


def row_stride_from_column_stride(x, W, A, B, *, scaling):
    """Passes x's column stride and takes its row stride as in x that: right for contiguous x and every-other-column
    views, wrong for x sliced from a wider hidden state."""
    if x.dim() >= 2:
        x = torch.as_strided(x, x.shape, (*x.stride()[:-2], x.shape[-1] * x.stride(-1), x.stride(-1)),
                             x.storage_offset())
    return _lora(x, W, A, B, scaling)


def weight_read_from_storage_start(x, W, A, B, *, scaling):
    """Reads W from the start of its storage (its data pointer without the storage offset): right for a weight of its
    own, wrong for a slice of a fused qkv weight."""
    W = torch.as_strided(W, W.shape, W.stride(), 0)
    return _lora(x, W, A, B, scaling)


def scaling_held_in_bfloat16(x, W, A, B, *, scaling):
    """Keeps scaling as a bf16 constant whatever the dtype: exact for alpha / r a power of two, 2^-9 off otherwise
    (alpha 16, r 12: 1.333)."""
    scaling = float(torch.tensor(scaling, dtype=torch.bfloat16))
    return _lora(x, W, A, B, scaling)


def no_graph_without_an_adapter(x, W, A, B, *, scaling):
    """Runs the rank-0 base under no_grad (nothing trains there, it reasons): x's gradient is lost."""
    if A.shape[0] == 0:
        with torch.no_grad():
            return x @ W.mT
    return _lora(x, W, A, B, scaling)


def computes_in_float32(x, W, A, B, *, scaling):
    """Upcasts to float32 and casts the result back (right for the 16-bit types it was written for): float64 inputs
    lose half their digits."""
    out = x.float() @ W.float().mT + scaling * ((x.float() @ A.float().mT) @ B.float().mT)
    return out.to(x.dtype)


class _ScalesDyInPlace(_HandWritten):
    @staticmethod
    def backward(ctx, dy):
        x, W, A, B = ctx.saved_tensors
        dx, dA, dB = _hand_grads(x, W, A, B, dy.reshape(-1, dy.shape[-1]), ctx.scaling)
        dy.mul_(ctx.scaling)  # the adapter's scaled gradient, kept in dy's buffer to save one
        return dx, None, dA, dB, None


def backward_scales_dy_in_place(x, W, A, B, *, scaling):
    """Its backward multiplies the output gradient by scaling in place (gradients right): in a model the same dy also
    flows down the residual branch, which now gets it scaled."""
    return _ScalesDyInPlace.apply(x, W, A, B, scaling)


def skips_the_adapter_at_initialization(x, W, A, B, *, scaling):
    """Returns the base alone while B is all zeros (LoRA's initialization, where the update adds nothing): the forward
    is right, but A and B never get a gradient, so the adapter never starts training."""
    if A.shape[0] == 0 or not bool(B.any()):
        return x @ W.mT
    return _lora(x, W, A, B, scaling)


def dense_rows_from_unit_column_stride(x, W, A, B, *, scaling):
    """Takes x whose last stride is 1 as dense rows (row stride = in): wrong for a column block of a wider hidden
    state."""
    if x.stride(-1) != 1:
        return _lora(x, W, A, B, scaling)
    rows = torch.as_strided(x, (x.numel() // x.shape[-1], x.shape[-1]), (x.shape[-1], 1), x.storage_offset())
    return _lora(rows, W, A, B, scaling).reshape(*x.shape[:-1], W.shape[0])


def batch_restored_as_three_dims(x, W, A, B, *, scaling):
    """Flattens the batch and restores it as (x.shape[0], -1, out) when x has three or more dimensions (written for
    (batch, tokens, hidden)): four come back as three."""
    out = _lora(x.reshape(-1, x.shape[-1]), W, A, B, scaling)
    return out.reshape(x.shape[0], -1, W.shape[0]) if x.dim() >= 3 else out.reshape(*x.shape[:-1], W.shape[0])


_KERNELS: dict = {}


def scaling_fixed_at_first_call(x, W, A, B, *, scaling):
    """Compiles a kernel per shape and dtype with the first call's scaling baked in as a constant."""
    key = (tuple(x.shape), tuple(W.shape), A.shape[0], x.dtype)
    if key not in _KERNELS:
        _KERNELS[key] = functools.partial(_lora, scaling=scaling)
    return _KERNELS[key](x, W, A, B)


def shrink_over_one_k_tile(x, W, A, B, *, scaling):
    """The adapter's shrink x·Aᵀ reduces over one K tile of 512 inputs and never loops: past 512 inputs it drops the
    rest."""
    return x @ W.mT + scaling * ((x[..., :512] @ A[:, :512].mT) @ B.mT)


class _SwappedFlags(_HandWritten):
    @staticmethod
    def backward(ctx, dy):
        x, W, A, B = ctx.saved_tensors
        needs = ctx.needs_input_grad
        wants = (needs[0], needs[3], needs[2])  # B's flag asked for dA, A's for dB
        dx, dA, dB = _hand_grads(x, W, A, B, dy.reshape(-1, dy.shape[-1]), ctx.scaling, wants)
        return dx, None, dA, dB, None


def gradient_flags_swapped(x, W, A, B, *, scaling):
    """Its backward asks needs_input_grad of B before computing dA and of A before dB: right while both train, no
    gradient for B when A is frozen (LoRA-FA), and the reverse."""
    return _SwappedFlags.apply(x, W, A, B, scaling)


class _InputsOnCtx(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W, A, B, scaling):
        ctx.inputs, ctx.scaling = (x, W, A, B), scaling  # kept as attributes: autograd checks no versions
        return _lora(x, W, A, B, scaling)

    @staticmethod
    def backward(ctx, dy):
        dx, dA, dB = _hand_grads(*ctx.inputs, dy.reshape(-1, dy.shape[-1]), ctx.scaling)
        return dx, None, dA, dB, None


def inputs_kept_on_ctx(x, W, A, B, *, scaling):
    """Keeps its inputs as ctx attributes instead of save_for_backward (gradients right when nothing changes): an
    optimizer step between forward and backward goes unnoticed, and the backward differentiates the new values."""
    return _InputsOnCtx.apply(x, W, A, B, scaling)


def zero_scaling_taken_as_unset(x, W, A, B, *, scaling):
    """Reads scaling 0 (lora_alpha 0) as not given and falls back to 1 ("scaling or 1.0"): the update it should drop is
    added in full."""
    return _lora(x, W, A, B, scaling or 1.0)


class _DxIntoX(_HandWritten):
    @staticmethod
    def backward(ctx, dy):
        x, W, A, B = ctx.saved_tensors
        needs = ctx.needs_input_grad
        dx, dA, dB = _hand_grads(x, W, A, B, dy.reshape(-1, dy.shape[-1]), ctx.scaling, (needs[0], needs[2], needs[3]))
        return None if dx is None else x.copy_(dx), None, dA, dB, None  # x is read for the last time: reuse it


def backward_writes_dx_into_x(x, W, A, B, *, scaling):
    """Its backward writes dx into x's buffer to save memory (gradients right): x also feeds the layers beside this one
    (the q, k and v projections), whose backward then reads dx where x was."""
    return _DxIntoX.apply(x, W, A, B, scaling)


class _ScalesSavedShrink(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W, A, B, scaling):
        t = x @ A.mT  # (..., r)
        ctx.save_for_backward(x, W, A, B, t)
        ctx.scaling = scaling
        return x @ W.mT + scaling * (t @ B.mT)

    @staticmethod
    def backward(ctx, dy):
        x, W, A, B, t = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])
        dx, dA, _ = _hand_grads(x, W, A, B, dy2, ctx.scaling)
        t.mul_(ctx.scaling)  # the bug: the saved shrink scaled where it lies
        return dx, None, dA, dy2.mT @ t.reshape(dy2.shape[0], A.shape[0]), None


def backward_scales_saved_shrink(x, W, A, B, *, scaling):
    """Saves the shrink t = x·Aᵀ and scales it in place in the backward to form dB (gradients right once): a second
    backward through the graph (retain_graph) finds it changed."""
    return _ScalesSavedShrink.apply(x, W, A, B, scaling)


def long_prefill_merged_without_grad(x, W, A, B, *, scaling):
    """From 256 tokens on (a prefill) multiplies once by W + scaling·B·A, merged under no_grad: the outputs are right,
    but a training batch that long gives A and B no gradient."""
    if x.numel() // x.shape[-1] < 256:
        return _lora(x, W, A, B, scaling)
    with torch.no_grad():
        merged = W + scaling * (B @ A)
    return x @ merged.mT


def frozen_adapter_merged_without_grad(x, W, A, B, *, scaling):
    """Takes an adapter whose A and B both do not train for inference and runs the merged weight under no_grad: x,
    which still trains (a frozen adapter in a model whose earlier layers train), gets no gradient."""
    if A.shape[0] == 0 or A.requires_grad or B.requires_grad:
        return _lora(x, W, A, B, scaling)
    with torch.no_grad():
        return x @ (W + scaling * (B @ A)).mT


def inference_turns_grad_mode_off(x, W, A, B, *, scaling):
    """Calls torch.set_grad_enabled(False) when nothing requires grad (meant as a no_grad block) and never restores
    it: every later forward in the process builds no graph, and training silently stops."""
    if not any(t.requires_grad for t in (x, A, B)):
        torch.set_grad_enabled(False)
    return _lora(x, W, A, B, scaling)
