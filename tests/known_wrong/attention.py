"""Known-wrong attention kernels, each with one classic bug; `llmopt verify attention --impl FILE:FUNC` must reject
every one on CPU within the default budget. Each is written as a plausible kernel author would, not from the
reference module."""
import torch


def _scores_mask(N, M, causal, window, offset_fn=lambda i, M, N: i + M - N):
    i = torch.arange(N).unsqueeze(1)
    j = torch.arange(M).unsqueeze(0)
    diagonal = offset_fn(i, M, N)
    keep = torch.ones(N, M, dtype=torch.bool)
    if causal:
        keep &= j <= diagonal
    if window[0] >= 0:
        keep &= j >= diagonal - window[0]
    if window[1] >= 0:
        keep &= j <= diagonal + window[1]
    return keep


def _scale(q, scale):
    """The softmax scale: D ** -0.5 unless given."""
    return q.shape[-1] ** -0.5 if scale is None else scale


def _read_through(t, stride):
    """t's elements as a kernel handed `stride` instead of t's own strides reads them, from t's storage offset."""
    return t.as_strided(t.shape, stride, t.storage_offset())


def _naive(q, k, v, keep, scale, head_map=None):
    Hq, Hkv = q.shape[1], k.shape[1]
    index = head_map(torch.arange(Hq), Hq, Hkv) if head_map else torch.arange(Hq) // (Hq // Hkv)
    k, v = k[:, index].float(), v[:, index].float()
    s = (q.float() @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~keep.to(q.device), float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return (p @ v).to(q.dtype)


def wrong_scale(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    """Divides by D instead of sqrt(D)."""
    D = q.shape[-1]
    return _naive(q, k, v, _scores_mask(q.shape[2], k.shape[2], causal, window), 1.0 / D if scale is None else scale)


def causal_off_by_one(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    """Excludes the diagonal key: j < i + M - N."""
    keep = _scores_mask(q.shape[2], k.shape[2], causal, window, lambda i, M, N: i + M - N - int(causal))
    return _naive(q, k, v, keep, _scale(q, scale))


def top_left_causal(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    """Aligns the causal mask top-left (j <= i), right only when N == M."""
    keep = _scores_mask(q.shape[2], k.shape[2], causal, window, lambda i, M, N: i)
    return _naive(q, k, v, keep, _scale(q, scale))


def wrong_gqa_mapping(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    """Query head h reads KV head h % Hkv instead of h // (Hq // Hkv)."""
    keep = _scores_mask(q.shape[2], k.shape[2], causal, window)
    return _naive(q, k, v, keep, _scale(q, scale), lambda h, Hq, Hkv: h % Hkv)


def _tiled(q, k, v, *, causal, scale, window, rescale_output=True, mask_padding=True, accumulate=torch.float32,
           block=16):
    """Online-softmax tiling over key blocks of `block`, K/V zero-padded to a multiple of the block; the result is in
    the `accumulate` dtype (callers cast it back)."""
    B, Hq, N, D = q.shape
    M = k.shape[2]
    scale = D ** -0.5 if scale is None else scale
    group = Hq // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    padded = -(-M // block) * block
    k = torch.nn.functional.pad(k, (0, 0, 0, padded - M)).to(accumulate)
    v = torch.nn.functional.pad(v, (0, 0, 0, padded - M)).to(accumulate)
    keep = torch.nn.functional.pad(_scores_mask(N, M, causal, window), (0, padded - M), value=not mask_padding)
    q = q.to(accumulate)
    m = torch.full((B, Hq, N, 1), float("-inf"), dtype=accumulate)
    row_sum = torch.zeros((B, Hq, N, 1), dtype=accumulate)
    acc = torch.zeros((B, Hq, N, D), dtype=accumulate)
    for n0 in range(0, padded, block):
        s = (q @ k[:, :, n0:n0 + block].transpose(-1, -2)) * scale
        s = s.masked_fill(~keep[:, n0:n0 + block], float("-inf"))
        m_new = torch.maximum(m, s.amax(-1, keepdim=True))
        m_safe = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
        p = torch.exp(s - m_safe)
        alpha = torch.exp(m - m_safe)
        row_sum = alpha * row_sum + p.sum(-1, keepdim=True)
        acc = (alpha * acc if rescale_output else acc) + p @ v[:, :, n0:n0 + block]
        m = m_new
    seen = row_sum > 0
    return torch.where(seen, acc / torch.where(seen, row_sum, torch.ones_like(row_sum)), torch.zeros_like(acc))


def missing_rescale(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    """Rescales the running sum but not the running output when the running max grows."""
    return _tiled(q, k, v, causal=causal, scale=scale, window=window, rescale_output=False).to(q.dtype)


def padding_leak(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    """Pads keys to a multiple of the block with zeros and forgets to mask the padding."""
    return _tiled(q, k, v, causal=causal, scale=scale, window=window, mask_padding=False).to(q.dtype)


def half_accumulation(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    """Keeps the running max, sum and output in the input precision (fp16/bf16) instead of fp32."""
    accumulate = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.float32
    return _tiled(q, k, v, causal=causal, scale=scale, window=window, accumulate=accumulate).to(q.dtype)


class _RecomputingBackward(torch.autograd.Function):
    """Forward with the mask; a backward that recomputes the probabilities, with one bug: "maskless" (as if nothing
    were masked: a backward that forgot the mask), "dout_in_place" (right gradients, then the softmax scale folded
    into the caller's output gradient in place, to reuse its buffer), "dout_contiguous" (the output gradient read
    with the contiguous strides of the output it saved) or "key_tail" (the forward drops the keys past the last
    full block of 16; the backward recomputes with all of them)."""

    @staticmethod
    def forward(ctx, q, k, v, keep, scale, bug):
        ctx.save_for_backward(q, k, v, keep)
        ctx.scale, ctx.bug = scale, bug
        if bug == "key_tail":
            keep = keep & (torch.arange(keep.shape[1]) < keep.shape[1] // 16 * 16)
        return _naive(q, k, v, keep, scale)

    @staticmethod
    def backward(ctx, dout):
        *qkv, keep = ctx.saved_tensors
        q, k, v = (t.detach().requires_grad_() for t in qkv)
        if ctx.bug == "dout_contiguous":
            dout = _read_through(dout, torch.empty(dout.shape, device="meta").stride())
        with torch.enable_grad():
            out = _naive(q, k, v, torch.ones_like(keep) if ctx.bug == "maskless" else keep, ctx.scale)
            dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
        if ctx.bug == "dout_in_place":
            dout.mul_(ctx.scale)
        return dq, dk, dv, None, None, None


def backward_ignores_mask(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    """Correct forward; the backward recomputes the probabilities without the causal/window mask."""
    keep = _scores_mask(q.shape[2], k.shape[2], causal, window)
    return _RecomputingBackward.apply(q, k, v, keep, _scale(q, scale), "maskless")


def backward_scales_dout_in_place(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    """Correct forward and gradients; the backward then scales the output gradient in place (in a model the same
    gradient also flows down the residual branch)."""
    keep = _scores_mask(q.shape[2], k.shape[2], causal, window)
    return _RecomputingBackward.apply(q, k, v, keep, _scale(q, scale), "dout_in_place")


def nondeterministic_output(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    """Accumulates in a run-dependent order: the result moves by an ulp from call to call (within tolerance)."""
    out = _naive(q, k, v, _scores_mask(q.shape[2], k.shape[2], causal, window), _scale(q, scale))
    wobble = torch.randint(0, 2, out.shape).to(out.dtype) * torch.finfo(out.dtype).eps
    return out * (1 + wobble)


_OUTPUTS: dict = {}


def nondeterministic_into_one_buffer(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    """Accumulates in a run-dependent order into one preallocated output per shape (a static output buffer): compared
    as returned, two calls are one tensor and always agree."""
    out = nondeterministic_output(q, k, v, causal=causal, scale=scale, window=window)
    return _OUTPUTS.setdefault((out.shape, out.dtype), torch.empty_like(out)).copy_(out)


def prescales_q_in_place(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    """Folds the softmax scale into q in place (the caller's q changes)."""
    q.data.mul_(_scale(q, scale))
    return _naive(q, k, v, _scores_mask(q.shape[2], k.shape[2], causal, window), 1.0)


def finite_mask_value(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    """Masks with -1e4 instead of -inf: a row with no visible key becomes the mean of all values, not zero."""
    keep = _scores_mask(q.shape[2], k.shape[2], causal, window)
    s = (q.float() @ k[:, torch.arange(q.shape[1]) // (q.shape[1] // k.shape[1])].float().transpose(-1, -2))
    s = (s * _scale(q, scale)).masked_fill(~keep, -1e4)
    return (torch.softmax(s, -1) @ v[:, torch.arange(q.shape[1]) // (q.shape[1] // k.shape[1])].float()).to(q.dtype)


def unguarded_softmax(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    """Softmax over all -inf scores without a guard: rows with no visible key come out NaN."""
    keep = _scores_mask(q.shape[2], k.shape[2], causal, window)
    index = torch.arange(q.shape[1]) // (q.shape[1] // k.shape[1])
    s = (q.float() @ k[:, index].float().transpose(-1, -2)) * _scale(q, scale)
    return (torch.softmax(s.masked_fill(~keep, float("-inf")), -1) @ v[:, index].float()).to(q.dtype)


def dout_read_as_contiguous(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    """Right forward; the backward reads the output gradient with the strides of a contiguous output."""
    keep = _scores_mask(q.shape[2], k.shape[2], causal, window)
    return _RecomputingBackward.apply(q, k, v, keep, _scale(q, scale), "dout_contiguous")


def k_read_with_v_strides(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    """Reads k through v's strides (one set passed for both, as they have one shape)."""
    keep = _scores_mask(q.shape[2], k.shape[2], causal, window)
    return _naive(q, _read_through(k, v.stride()), v, keep, _scale(q, scale))


def layout_from_q_only(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    """Takes k and v for (B, M, Hkv, D) memory whenever q is a (B, N, Hq, D) tensor seen as (B, Hq, N, D)."""
    if q.transpose(1, 2).is_contiguous() and not q.is_contiguous():
        B, Hkv, M, D = k.shape
        bnhd = torch.empty(B, M, Hkv, D, device="meta").transpose(1, 2).stride()
        k, v = _read_through(k, bnhd), _read_through(v, bnhd)
    keep = _scores_mask(q.shape[2], k.shape[2], causal, window)
    return _naive(q, k, v, keep, _scale(q, scale))


def zero_scale_taken_as_default(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    """`scale or D ** -0.5`: an explicit scale of 0 (every visible key weighted alike) runs with the default."""
    return _naive(q, k, v, _scores_mask(q.shape[2], k.shape[2], causal, window), scale or q.shape[-1] ** -0.5)


def gqa_heads_by_shift(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    """Query head h reads KV head h >> ceil(log2(group)) instead of h // group: right for groups of 1, 2, 4, ..."""
    keep = _scores_mask(q.shape[2], k.shape[2], causal, window)
    return _naive(q, k, v, keep, _scale(q, scale), lambda h, Hq, Hkv: h >> (Hq // Hkv - 1).bit_length())


def softmax_without_max(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    """exp(s) / sum exp(s) in float32 without subtracting the row max: scores past exp's range give inf / inf."""
    keep = _scores_mask(q.shape[2], k.shape[2], causal, window)
    index = torch.arange(q.shape[1]) // (q.shape[1] // k.shape[1])
    s = (q.float() @ k[:, index].float().transpose(-1, -2)) * _scale(q, scale)
    p = torch.exp(s.masked_fill(~keep, float("-inf")))  # (B, Hq, N, M)
    total = p.sum(-1, keepdim=True)
    p = torch.where(total > 0, p / total, torch.zeros_like(p))
    return (p @ v[:, index].float()).to(q.dtype)


def head_dim_cut_at_128(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    """One head-dim block of at most 128: dims past 128 take no part in the scores, and come out zero."""
    keep, cut = _scores_mask(q.shape[2], k.shape[2], causal, window), min(q.shape[-1], 128)
    out = _naive(q[..., :cut], k[..., :cut], v[..., :cut], keep, _scale(q, scale))
    return torch.nn.functional.pad(out, (0, q.shape[-1] - cut))


_STATIC: dict = {}


def static_output_buffer(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    """Right values, written every call into one preallocated output per shape: the output a caller holds from an
    earlier call changes under it at the next call."""
    out = _naive(q, k, v, _scores_mask(q.shape[2], k.shape[2], causal, window), _scale(q, scale))
    return _STATIC.setdefault((out.shape, out.dtype, out.device), torch.empty_like(out)).copy_(out)


def forward_under_grad_drops_key_tail(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    """Right without autograd; the training path (an input that requires grad) drops the keys past the last full
    block of 16 from its forward, and its backward recomputes with all keys (the gradients are right)."""
    keep = _scores_mask(q.shape[2], k.shape[2], causal, window)
    scale = _scale(q, scale)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        return _RecomputingBackward.apply(q, k, v, keep, scale, "key_tail")
    return _naive(q, k, v, keep, scale)
