"""vLLM's FlashAttention-3 paged decode (vllm.vllm_flash_attn.flash_attn_varlen_func, block_table, fa_version=3;
Hopper): one query token per sequence as a varlen batch over vLLM's own (num_blocks, block_size, Hkv, D) cache;
`prepare` builds cu_seqlens_q and FA3's scheduler metadata outside the timing, as vLLM's backend does each step."""
from __future__ import annotations

from llmopt.impls import register

HALF = ("float16", "bfloat16")


def _available() -> str | None:
    try:
        from vllm.vllm_flash_attn import flash_attn_varlen_func  # noqa: F401
        from vllm.vllm_flash_attn.flash_attn_interface import fa_version_unsupported_reason, is_fa_version_supported
    except Exception as error:  # noqa: BLE001 - any import failure (missing .so, CUDA mismatch) makes it unavailable
        return f"vllm.vllm_flash_attn does not import: {type(error).__name__}: {error}"
    if not is_fa_version_supported(3):
        return f"FlashAttention-3 unsupported here: {fa_version_unsupported_reason(3)}"
    return None


def _unsupported(case):
    if case.block_size % 16:
        return "block size not a multiple of 16 (vLLM's FlashAttention backend requires it)"
    return None if case.D % 8 == 0 and case.D <= 256 else "head dim not a multiple of 8 up to 256"


def prepare(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    import torch
    from vllm.vllm_flash_attn import flash_attn_varlen_func, get_scheduler_metadata

    B, Hq, D = q.shape
    _, block_size, Hkv, _ = k_cache.shape
    seq_lens = seq_lens.contiguous()  # FA3 takes contiguous lengths: a strided view is copied here, outside the timing
    longest = int(seq_lens.max())
    cu_seqlens_q = torch.arange(B + 1, dtype=torch.int32, device=q.device)  # (B + 1,)
    softmax_scale = D**-0.5 if scale is None else scale
    metadata = get_scheduler_metadata(
        batch_size=B, max_seqlen_q=1, max_seqlen_k=longest, num_heads_q=Hq, num_heads_kv=Hkv, headdim=D,
        cache_seqlens=seq_lens, qkv_dtype=q.dtype, cu_seqlens_q=cu_seqlens_q, page_size=block_size, causal=True)

    def run():
        return flash_attn_varlen_func(q, k_cache, v_cache, max_seqlen_q=1, cu_seqlens_q=cu_seqlens_q,
                                      max_seqlen_k=longest, seqused_k=seq_lens, block_table=block_table,
                                      softmax_scale=softmax_scale, causal=True, scheduler_metadata=metadata,
                                      fa_version=3)  # (B, Hq, D): one query row per sequence

    return run, lambda out: out


@register("paged_attention", "vllm_fa3", kind="library", devices=("cuda",), requires=("vllm",), available=_available,
          prepare=prepare, supports={"dtypes": HALF, "check": _unsupported})
def vllm_fa3(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    run, _ = prepare(q, k_cache, v_cache, block_table, seq_lens, scale=scale)
    return run()
