"""Correct paged decode kernels held to the contract as user kernels: gather each sequence then the naive reference,
and split-KV (FlashDecoding) in plain PyTorch: partial softmax results over chunks of 5 tokens in float32, merged in a
fixed order with their log-sum-exp weights."""
import torch
from llmopt.reference.attention import attention
from llmopt.reference.paged_attention import gather_sequence


def gather_then_attention(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    outs = []
    for b in range(q.shape[0]):
        k = gather_sequence(k_cache, block_table[b], int(seq_lens[b])).transpose(0, 1)[None]  # (1, Hkv, L, D)
        v = gather_sequence(v_cache, block_table[b], int(seq_lens[b])).transpose(0, 1)[None]
        outs.append(attention(q[b, :, None][None], k, v, scale=scale)[0, :, 0])
    return torch.stack(outs)


def split_kv(q, k_cache, v_cache, block_table, seq_lens, *, scale=None, chunk=5):
    wide = torch.float64 if q.dtype == torch.float64 else torch.float32
    B, Hq, D = q.shape
    scale = D**-0.5 if scale is None else scale
    out = torch.empty_like(q)
    for b in range(B):
        L = int(seq_lens[b])
        group = Hq // k_cache.shape[2]
        k = gather_sequence(k_cache, block_table[b], L).to(wide).repeat_interleave(group, 1)  # (L, Hq, D)
        v = gather_sequence(v_cache, block_table[b], L).to(wide).repeat_interleave(group, 1)
        partial, lse = [], []
        for start in range(0, L, chunk):
            s = torch.einsum("hd,shd->hs", q[b].to(wide), k[start:start + chunk]) * scale  # (Hq, n)
            m = s.amax(1, keepdim=True)
            p = torch.exp(s - m)
            partial.append(torch.einsum("hs,shd->hd", p, v[start:start + chunk]) / p.sum(1, keepdim=True))
            lse.append(m + p.sum(1, keepdim=True).log())
        lse = torch.cat(lse, 1)  # (Hq, splits)
        weights = torch.softmax(lse, 1)
        out[b] = torch.einsum("hs,shd->hd", weights, torch.stack(partial, 1).transpose(0, 1)).to(q.dtype)
    return out
