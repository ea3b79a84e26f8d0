"""FlashAttention-4 (flash_attn.cute, CuTe DSL; Hopper and Blackwell kernels) as an attention impl, forward and
backward, bottom-right causal and sliding windows native, GQA native. Inputs go to (B, N, H, D) outside the timing."""
from __future__ import annotations

from llmopt.impls import register
from llmopt.impls.attention._layout import check_half_and_head_dim, flash_window, from_bnhd, to_bnhd


def fa4_unavailable_reason():
    """Why FlashAttention-4 cannot run here (flash_attn.cute does not import, or the GPU is older than Hopper), or None;
    shared by every FA4 adapter."""
    try:
        from flash_attn.cute import flash_attn_func  # noqa: F401
    except Exception as error:  # noqa: BLE001 - any import failure makes it unavailable, with the reason
        return f"flash_attn.cute does not import: {type(error).__name__}: {error}"
    import torch

    if torch.cuda.get_device_capability()[0] < 9:
        return "FlashAttention-4 needs Hopper (sm_90) or newer"
    return None


def prepare(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    from flash_attn.cute import flash_attn_func

    qb, kb, vb = to_bnhd(q, k, v)
    kwargs = {"softmax_scale": scale, "causal": causal, "window_size": flash_window(window, None)}

    def run():
        out = flash_attn_func(qb, kb, vb, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    return run, from_bnhd


@register("attention", "fa4", kind="library", devices=("cuda",), requires=("flash_attn",),
          available=fa4_unavailable_reason,
          prepare=prepare, supports={"dtypes": ("float16", "bfloat16"), "check": check_half_and_head_dim})
def fa4(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    run, to_contract = prepare(q, k, v, causal=causal, scale=scale, window=window)
    return to_contract(run())
