"""FlashAttention-4 (flash_attn.cute) paged decode: flash_attn_varlen_func with page_table and seqused_k over the
(num_pages, page_size, Hkv, D) cache, one length-1 query per sequence (B, 1, Hq, D). On Hopper it has no split-KV
(num_splits stays 1), a page size other than its key tile takes the cp.async path, kernels compile at first use."""
from __future__ import annotations

from llmopt.impls import register

HALF = ("float16", "bfloat16")


def _available() -> str | None:
    try:
        import torch
        from flash_attn.cute import flash_attn_varlen_func
    except Exception as error:
        return f"flash_attn.cute does not import: {type(error).__name__}: {error}"
    if torch.cuda.get_device_capability()[0] < 9:
        return "FlashAttention-4 paged KV needs sm_90 or newer"
    return None


def _unsupported(case):
    return None if case.D % 8 == 0 and 8 <= case.D <= 256 else "head dim not a multiple of 8 in [8, 256]"


def prepare(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    from flash_attn.cute import flash_attn_varlen_func

    longest = int(seq_lens.max())
    q4 = q.unsqueeze(1)  # (B, 1, Hq, D): batch mode, no cu_seqlens_q
    table = block_table.contiguous()

    def run():
        result = flash_attn_varlen_func(q4, k_cache, v_cache, max_seqlen_q=1, max_seqlen_k=longest,
                                        seqused_k=seq_lens, page_table=table, softmax_scale=scale, causal=False)
        out = result[0] if isinstance(result, tuple) else result  # (out, lse) in recent releases
        return out[:, 0]  # (B, Hq, D)

    return run, lambda out: out


@register("paged_attention", "fa4_paged", kind="library", devices=("cuda",), requires=("flash_attn",),
          available=_available, prepare=prepare, supports={"dtypes": HALF, "check": _unsupported},
          examples_budget={"cuda": 12})
def fa4_paged(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    run, _ = prepare(q, k_cache, v_cache, block_table, seq_lens, scale=scale)
    return run()
