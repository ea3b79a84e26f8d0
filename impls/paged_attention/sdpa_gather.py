"""Baseline: gather every sequence's K/V out of the pages into a padded contiguous (B, Hkv, L_max, D) tensor, then
torch.nn.functional.scaled_dot_product_attention with GQA (enable_gqa) and, for ragged lengths, a padding mask. The
gather indices are planned in `prepare`; the gather itself is part of the timed call."""
from __future__ import annotations

from llmopt.impls import register


def prepare(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    import torch
    import torch.nn.functional as F

    B, Hq = q.shape[:2]
    _, block_size, Hkv, _ = k_cache.shape
    lengths = seq_lens.long()
    longest = int(lengths.max())
    positions = torch.arange(longest, device=q.device)  # (L,)
    valid = positions[None, :] < lengths[:, None]  # (B, L)
    blocks = block_table.long().gather(1, (positions // block_size)[None, :].expand(B, -1).clamp(
        max=block_table.shape[1] - 1))  # (B, L)
    slots = positions % block_size  # (B, L) slot of each token in its block
    # padding re-reads the sequence's first token (finite), masked
    blocks, slots = (torch.where(valid, t, t[:, :1]) for t in (blocks, slots.expand(B, -1)))
    mask = None if bool(valid.all()) else valid[:, None, None, :]  # (B, 1, 1, L)

    def run():  # indexed by (block, slot): any strides of the caches
        k = k_cache[blocks, slots].transpose(1, 2)  # (B, Hkv, L, D)
        v = v_cache[blocks, slots].transpose(1, 2)
        out = F.scaled_dot_product_attention(q[:, :, None], k, v, attn_mask=mask, scale=scale, enable_gqa=Hq != Hkv)
        return out[:, :, 0]  # (B, Hq, D)

    return run, lambda out: out


@register("paged_attention", "sdpa_gather", kind="torch", devices=("cpu", "cuda"), prepare=prepare)
def sdpa_gather(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    run, _ = prepare(q, k_cache, v_cache, block_table, seq_lens, scale=scale)
    return run()
