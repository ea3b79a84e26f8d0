"""The flash-attn package's FlashAttention-2 (flash_attn.flash_attn_interface.flash_attn_func) as an attention impl,
forward and backward; bottom-right causal and windows native, GQA native, (B, N, H, D) layout outside the timing.
It ships only as a source distribution: where it is not built, it is listed unavailable with that reason."""
from __future__ import annotations

from llmopt.impls import register
from llmopt.impls.attention._layout import check_half_and_head_dim, flash_window, from_bnhd, to_bnhd


def _available():
    try:
        from flash_attn.flash_attn_interface import flash_attn_func  # noqa: F401
    except Exception as error:  # noqa: BLE001
        return (f"flash_attn.flash_attn_interface does not import ({type(error).__name__}: {error}); the flash-attn "
                "package has only a source distribution, whose CUDA build takes longer than a GPU-host command may run")
    return None


def prepare(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    from flash_attn.flash_attn_interface import flash_attn_func

    qb, kb, vb = to_bnhd(q, k, v)
    kwargs = {"softmax_scale": scale, "causal": causal, "window_size": flash_window(window, -1)}
    return (lambda: flash_attn_func(qb, kb, vb, **kwargs)), from_bnhd


@register("attention", "flash_attn2", kind="library", devices=("cuda",), requires=("flash_attn",),
          available=_available, prepare=prepare,
          supports={"dtypes": ("float16", "bfloat16"), "check": check_half_and_head_dim})
def flash_attn2(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    run, to_contract = prepare(q, k, v, causal=causal, scale=scale, window=window)
    return to_contract(run())
