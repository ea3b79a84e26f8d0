"""Known-wrong DoRA layers, each with one classic bug; `llmopt verify dora --impl FILE:FUNC` must reject every one."""
import torch


def _direction(W0, A, B, scaling):
    return W0 + scaling * (B @ A)


def _rescaled(x, V, m, norm):
    """x·((m / norm) ⊙ V)ᵀ: DoRA's output for a direction V and whatever per-row norm the bug takes."""
    return x @ ((m / norm)[:, None] * V).mT


def norm_over_outputs(x, W0, A, B, m, *, scaling):
    """Normalizes each input column (norm over the output dimension, the seed's "column" read literally for an (out,
    in) weight) and scales columns by m where shapes allow: not peft's per-output-feature norm."""
    V = _direction(W0, A, B, scaling)
    norm = torch.linalg.vector_norm(V, dim=0, keepdim=True).detach()  # (1, in)
    return x @ (m[:, None] * V / norm).mT


def norm_not_detached(x, W0, A, B, m, *, scaling):
    """Differentiates the norm (the DoRA paper's formula without its section 4.3 detach): same forward, different
    dA, dB."""
    V = _direction(W0, A, B, scaling)
    return _rescaled(x, V, m, torch.linalg.vector_norm(V, dim=1))


def norm_of_base_only(x, W0, A, B, m, *, scaling):
    """Divides by ||W0|| instead of ||W0 + scaling·B·A|| (the norm cached at initialization)."""
    V = _direction(W0, A, B, scaling)
    return _rescaled(x, V, m, torch.linalg.vector_norm(W0, dim=1))


def magnitude_ignored(x, W0, A, B, m, *, scaling):
    """Plain LoRA: never applies the magnitude vector or the normalization."""
    return x @ _direction(W0, A, B, scaling).mT


def dropout_left_on(x, W0, A, B, m, *, scaling):
    """Applies LoRA dropout (p = 0.1, training mode) to the adapter's input: random outputs."""
    V = W0 + scaling * (B @ A)
    ratio = (m / torch.linalg.vector_norm(V, dim=1).detach())
    dropped = torch.nn.functional.dropout(x, 0.1, training=True)
    return ratio * (x @ W0.mT) + ratio * scaling * ((dropped @ A.mT) @ B.mT)


def normalizes_magnitude_in_place(x, W0, A, B, m, *, scaling):
    """Divides m by the norm in place to form the scale (m / ||V||), multiplying it back afterwards: m drifts."""
    V = W0 + scaling * (B @ A)
    norm = torch.linalg.vector_norm(V, dim=1).detach()
    with torch.no_grad():
        m.div_(norm)
    out = x @ (m[:, None] * V).mT
    with torch.no_grad():
        m.mul_(norm)
    return out


def scales_columns_when_square(x, W0, A, B, m, *, scaling):
    """Applies m / ||V|| with the wrong broadcast where the weight is square (ratio[None, :]: each input column
    scaled), the per-row scaling elsewhere: only square layers go wrong."""
    V = _direction(W0, A, B, scaling)
    ratio = m / torch.linalg.vector_norm(V, dim=1).detach()
    scaled = ratio[None, :] * V if V.shape[0] == V.shape[1] else ratio[:, None] * V
    return x @ scaled.mT


def norm_over_first_tile(x, W0, A, B, m, *, scaling):
    """Reduces each row's norm over its first 128 inputs only (a norm kernel with one tile along the input and no
    loop): right for layers up to 128 wide."""
    V = _direction(W0, A, B, scaling)
    norm = torch.linalg.vector_norm(V[:, :128], dim=1).detach()
    return _rescaled(x, V, m, norm)


_NORMS: dict = {}


def norm_kept_by_identity(x, W0, A, B, m, *, scaling):
    """Computes ||W0 + scaling·B·A|| once per (W0, A, B) object and reuses it (the norm is detached, so caching it
    looks free): stale after an optimizer step updates A and B in place."""
    key = (id(W0), id(A), id(B), scaling)
    if key not in _NORMS:
        _NORMS[key] = torch.linalg.vector_norm(_direction(W0, A, B, scaling), dim=1).detach()
    V = _direction(W0, A, B, scaling)
    return _rescaled(x, V, m, _NORMS[key])


_DIRECTIONS: dict = {}


class _SharedDirection(torch.autograd.Function):
    """DoRA whose forward keeps V = W0 + scaling·B·A and its norm in one buffer per weight shape, which its backward
    reads back."""

    @staticmethod
    def forward(ctx, x, W0, A, B, m, scaling):
        V = _direction(W0, A, B, scaling)
        _DIRECTIONS[tuple(V.shape)] = (V, torch.linalg.vector_norm(V, dim=1))
        ctx.save_for_backward(x, A, B, m)
        ctx.scaling, ctx.shape = scaling, tuple(V.shape)
        return _rescaled(x, V, m, _DIRECTIONS[ctx.shape][1])

    @staticmethod
    def backward(ctx, dy):
        x, A, B, m = ctx.saved_tensors
        V, norm = _DIRECTIONS[ctx.shape]  # the last forward's, not this one's
        x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
        ratio = m / norm
        dW = (dy2.mT @ x2) * ratio[:, None]  # d(out)/d(V) with the norm detached
        dm = ((dy2.mT @ x2) * V).sum(1) / norm
        dA = ctx.scaling * (B.mT @ dW)
        dB = ctx.scaling * (dW @ A.mT)
        dx = (dy2 @ (ratio[:, None] * V)).reshape(x.shape) if ctx.needs_input_grad[0] else None
        return dx, None, dA, dB, dm, None


def direction_buffer_shared_by_shape(x, W0, A, B, m, *, scaling):
    """Keeps V and its norm in one buffer per weight shape and reads them back in the backward: right while each
    forward is followed by its own backward, wrong in a model whose same-shaped layers all run forward first."""
    return _SharedDirection.apply(x, W0, A, B, m, scaling)


def skips_the_adapter_at_initialization(x, W0, A, B, m, *, scaling):
    """Returns the magnitude-scaled base while B is all zeros (DoRA's initialization): the forward is right, but A and
    B never get a gradient."""
    if A.shape[0] == 0 or not bool(B.any()):
        return _rescaled(x, W0, m, torch.linalg.vector_norm(W0, dim=1).detach())
    V = _direction(W0, A, B, scaling)
    return _rescaled(x, V, m, torch.linalg.vector_norm(V, dim=1).detach())


_NORMS_BY_VERSION: dict = {}


def norm_kept_by_address_and_version(x, W0, A, B, m, *, scaling):
    """Caches the detached norm under the address and version counter of W0, A and B (an in-place optimizer step
    bumps the version and invalidates it): stale when new values are written through .data, which keeps the version."""
    key = tuple((t.data_ptr(), t._version, tuple(t.shape)) for t in (W0, A, B)) + (scaling,)
    V = _direction(W0, A, B, scaling)
    if key not in _NORMS_BY_VERSION:
        _NORMS_BY_VERSION[key] = torch.linalg.vector_norm(V, dim=1).detach()
    return _rescaled(x, V, m, _NORMS_BY_VERSION[key])


class _MagnitudeGradFromOutput(torch.autograd.Function):
    """y = x·((m / ||V||) ⊙ V)ᵀ with the norm detached; the backward takes dm from the output, Σ dy·y / m (y is
    linear in m, so this holds wherever m != 0) instead of Σ dy·(x·Vᵀ) / ||V||."""

    @staticmethod
    def forward(ctx, x, W0, A, B, m, scaling):
        V = _direction(W0, A, B, scaling)
        ratio = m / torch.linalg.vector_norm(V, dim=1)  # (out,)
        weight = ratio[:, None] * V  # (out, in)
        y = x @ weight.mT
        ctx.save_for_backward(x, A, B, m, ratio, weight, y)
        ctx.scaling = scaling
        return y

    @staticmethod
    def backward(ctx, dy):
        x, A, B, m, ratio, weight, y = ctx.saved_tensors
        rows_dy, rows_x = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])  # (tokens, out), (tokens, in)
        dV = ratio[:, None] * (rows_dy.mT @ rows_x)  # (out, in): the norm held constant
        dm = (rows_dy * y.reshape(rows_dy.shape) / m).sum(0)
        return dy @ weight, None, ctx.scaling * B.mT @ dV, ctx.scaling * dV @ A.mT, dm, None


def magnitude_grad_from_output(x, W0, A, B, m, *, scaling):
    """Takes m's gradient from the output divided by m: right for every nonzero magnitude, NaN where a feature's
    magnitude is 0."""
    return _MagnitudeGradFromOutput.apply(x, W0, A, B, m, scaling)


def _detached_dora(x, W0, A, B, m, scaling):
    """DoRA as peft computes it: the norm of V detached."""
    V = _direction(W0, A, B, scaling)
    return _rescaled(x, V, m, torch.linalg.vector_norm(V, dim=1).detach())


def _merged_without_grad(x, W0, A, B, m, scaling):
    """x·((m / ||V||) ⊙ V)ᵀ with the merged weight formed under no_grad: no gradient reaches A, B or m."""
    with torch.no_grad():
        V = _direction(W0, A, B, scaling)
        weight = (m / torch.linalg.vector_norm(V, dim=1))[:, None] * V
    return x @ weight.mT


def frozen_factors_merged_without_grad(x, W0, A, B, m, *, scaling):
    """Takes A and B both frozen for inference and runs the merged weight under no_grad: m and x, which still train,
    get no gradient."""
    if A.shape[0] > 0 and not (A.requires_grad or B.requires_grad):
        return _merged_without_grad(x, W0, A, B, m, scaling)
    return _detached_dora(x, W0, A, B, m, scaling)


def long_prefill_merged_without_grad(x, W0, A, B, m, *, scaling):
    """From 256 tokens on (a prefill) multiplies once by the merged weight, formed under no_grad: the outputs are
    right, but a training batch that long gives A, B and m no gradient."""
    if x.numel() // x.shape[-1] >= 256:
        return _merged_without_grad(x, W0, A, B, m, scaling)
    return _detached_dora(x, W0, A, B, m, scaling)


class _RecomputedFromCtx(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W0, A, B, m, scaling):
        ctx.inputs, ctx.scaling = (x, W0, A, B, m), scaling  # kept as attributes: autograd checks no versions
        return _detached_dora(x, W0, A, B, m, scaling)

    @staticmethod
    def backward(ctx, dy):
        leaves = [t.detach().requires_grad_(t.requires_grad) for t in ctx.inputs]
        with torch.enable_grad():
            out = _detached_dora(*leaves, ctx.scaling)
        trained = [t for t in leaves if t.requires_grad]
        grads = iter(torch.autograd.grad(out, trained, dy, allow_unused=True))
        return (*(next(grads) if t.requires_grad else None for t in leaves), None)


def recomputes_from_inputs_on_ctx(x, W0, A, B, m, *, scaling):
    """Recomputes the layer in its backward from inputs kept as ctx attributes (checkpointing without
    save_for_backward; gradients right when nothing changes): after an optimizer step between forward and backward it
    differentiates the new values."""
    return _RecomputedFromCtx.apply(x, W0, A, B, m, scaling)
