"""FlashAttention-3 as vendored by vLLM (vllm.vllm_flash_attn.flash_attn_varlen_func, fa_version=3; Hopper), forward
only: sequences packed to (B*N, H, D) with cumulative lengths outside the timing; bottom-right causal, windows and
GQA native."""
from __future__ import annotations

from llmopt.impls import register
from llmopt.impls.attention._layout import check_half_and_head_dim, flash_window


def _available():
    try:
        from vllm.vllm_flash_attn import flash_attn_varlen_func  # noqa: F401
        from vllm.vllm_flash_attn.flash_attn_interface import is_fa_version_supported
    except Exception as error:  # noqa: BLE001
        return f"vllm.vllm_flash_attn does not import: {type(error).__name__}: {error}"
    if not is_fa_version_supported(3):
        return "vLLM reports FlashAttention-3 unsupported here (it needs Hopper, sm_90)"
    return None


def prepare(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    import torch
    from vllm.vllm_flash_attn import flash_attn_varlen_func

    B, Hq, N, D = q.shape
    M = k.shape[2]
    packed_q = q.transpose(1, 2).reshape(B * N, Hq, D).contiguous()  # (B*N, Hq, D)
    packed_k, packed_v = (t.transpose(1, 2).reshape(B * M, t.shape[1], D).contiguous() for t in (k, v))
    cu_q = torch.arange(0, (B + 1) * N, N, dtype=torch.int32, device=q.device)  # (B + 1,)
    cu_k = torch.arange(0, (B + 1) * M, M, dtype=torch.int32, device=q.device)
    kwargs = {"max_seqlen_q": N, "cu_seqlens_q": cu_q, "max_seqlen_k": M, "cu_seqlens_k": cu_k,
              "softmax_scale": D**-0.5 if scale is None else scale, "causal": causal,
              "window_size": list(flash_window(window, -1)), "fa_version": 3}

    def run():
        return flash_attn_varlen_func(packed_q, packed_k, packed_v, **kwargs)

    return run, lambda out: out.reshape(B, N, Hq, D).transpose(1, 2)


@register("attention", "vllm_fa3", kind="library", devices=("cuda",), requires=("vllm",), available=_available,
          prepare=prepare, supports={"dtypes": ("float16", "bfloat16"), "backward": False,
                                     "check": check_half_and_head_dim})
def vllm_fa3(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    run, to_contract = prepare(q, k, v, causal=causal, scale=scale, window=window)
    return to_contract(run())
