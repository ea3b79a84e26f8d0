"""FlashAttention-4 (flash_attn.cute) paged decode: flash_attn_varlen_func with page_table and seqused_k over the
(num_pages, page_size, Hkv, D) cache, one length-1 query per sequence (B, 1, Hq, D). On Hopper it has no split-KV
(num_splits stays 1), a page size other than its key tile takes the cp.async path, kernels compile at first use."""
from __future__ import annotations

from llmopt.impls import register
from llmopt.impls.attention._layout import check_half_and_head_dim
from llmopt.impls.attention.fa4 import fa4_unavailable_reason

HALF = ("float16", "bfloat16")


def prepare(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    from flash_attn.cute import flash_attn_varlen_func

    longest = int(seq_lens.max())
    q4 = q.unsqueeze(1)  # (B, 1, Hq, D): batch mode, no cu_seqlens_q
    table, seq_lens = block_table.contiguous(), seq_lens.contiguous()  # FA4 asserts contiguous lengths; copied here

    def run():
        result = flash_attn_varlen_func(q4, k_cache, v_cache, max_seqlen_q=1, max_seqlen_k=longest,
                                        seqused_k=seq_lens, page_table=table, softmax_scale=scale, causal=False)
        out = result[0] if isinstance(result, tuple) else result  # (out, lse) in recent releases
        return out[:, 0]  # (B, Hq, D)

    return run, lambda out: out


@register("paged_attention", "fa4_paged", kind="library", devices=("cuda",), requires=("flash_attn",),
          available=fa4_unavailable_reason, prepare=prepare,
          supports={"dtypes": HALF, "check": check_half_and_head_dim},
          examples_budget={"cuda": 12})
def fa4_paged(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    run, _ = prepare(q, k_cache, v_cache, block_table, seq_lens, scale=scale)
    return run()
