"""torch.nn.functional.scaled_dot_product_attention, one impl per backend (math, FlashAttention-2 on CUDA, the CPU
flash kernel, memory-efficient, cuDNN), pinned with sdpa_kernel so a backend that cannot take a case errors
instead of falling back. Bottom-right causal for N != M uses causal_lower_right; windows an explicit mask."""
from __future__ import annotations

from llmopt.impls import Unsupported, register

HALF = ("float16", "bfloat16")
_CAN_USE = {"FLASH_ATTENTION": "can_use_flash_attention", "EFFICIENT_ATTENTION": "can_use_efficient_attention",
            "CUDNN_ATTENTION": "can_use_cudnn_attention"}


def _check_backend_accepts(backend_name, q, k, v, kwargs):
    """Raise Unsupported, with torch's own reasons, when the pinned CUDA backend declines these inputs (torch would
    otherwise raise "No available kernel" with no reason)."""
    import warnings

    import torch
    from torch.backends import cuda

    if q.device.type != "cuda" or backend_name not in _CAN_USE:
        return
    mask = kwargs.get("attn_mask")
    params = cuda.SDPAParams(q, k, v, mask if isinstance(mask, torch.Tensor) else None, 0.0,
                             kwargs.get("is_causal", False), kwargs["enable_gqa"])
    with warnings.catch_warnings(record=True) as reasons:
        warnings.simplefilter("always")
        accepted = getattr(cuda, _CAN_USE[backend_name])(params, True)
    if not accepted:
        raise Unsupported("; ".join(str(w.message).split(" (Triggered")[0] for w in reasons) or backend_name)


def _plan(backend_name, q, k, v, causal, scale, window):
    """(backend, sdpa keyword arguments) for a case: the mask built once, outside any timed region."""
    from torch.nn.attention import SDPBackend
    from torch.nn.attention.bias import causal_lower_right

    N, M = q.shape[2], k.shape[2]
    kwargs = {"scale": scale, "enable_gqa": q.shape[1] != k.shape[1]}
    if tuple(window) != (-1, -1):
        i = _arange(N, q).unsqueeze(1) + (M - N)
        j = _arange(M, q).unsqueeze(0)
        keep = (j <= i) if causal else (j >= 0)
        keep = (keep & ((j >= i - window[0]) if window[0] >= 0 else True)
                & ((j <= i + window[1]) if window[1] >= 0 else True))
        kwargs["attn_mask"] = keep
    elif causal and N == M:
        kwargs["is_causal"] = True
    elif causal:
        kwargs["attn_mask"] = causal_lower_right(N, M)
    return getattr(SDPBackend, backend_name), kwargs


def _arange(n, like):
    import torch

    return torch.arange(n, device=like.device)


def _sdpa(backend_name):
    def prepare(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
        import torch.nn.functional as F
        from torch.nn.attention import sdpa_kernel

        backend, kwargs = _plan(backend_name, q, k, v, causal, scale, window)
        _check_backend_accepts(backend_name, q, k, v, kwargs)

        def run():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, **kwargs)

        return run, lambda out: out

    def attn(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
        run, _ = prepare(q, k, v, causal=causal, scale=scale, window=window)
        return run()

    return attn, prepare


def _add(name, backend_name, devices, supports):
    fn, prepare = _sdpa(backend_name)
    fn.__name__ = name
    register("attention", name, kind="torch", devices=devices, supports=supports, prepare=prepare)(fn)


_add("sdpa_math", "MATH", ("cpu", "cuda"), {})
_add("sdpa_flash_cpu", "FLASH_ATTENTION", ("cpu",), {})
# CUDA FlashAttention-2: no masks (so no windows, no bottom-right causal for N != M), half precision only.
_add("sdpa_flash", "FLASH_ATTENTION", ("cuda",),
     {"window": False, "causal_n_ne_m": False, "dtypes": HALF,
      "check": lambda c: None if c.D <= 256 else "head dim above 256"})
# Memory-efficient (xformers-derived): masks and lower-right causal; GQA only through expanded heads, not here.
_add("sdpa_efficient", "EFFICIENT_ATTENTION", ("cuda",), {"gqa": False})
# cuDNN: half precision, no GQA, no masks.
_add("sdpa_cudnn", "CUDNN_ATTENTION", ("cuda",),
     {"window": False, "causal_n_ne_m": False, "gqa": False, "dtypes": HALF,
      "check": lambda c: None if c.D % 8 == 0 and c.D <= 128 else "head dim not a multiple of 8 up to 128"})
