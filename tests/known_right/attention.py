"""Correct attentions held to the contract as user kernels: the naive reference and the online-softmax tiled form
(accumulating in float32 for half inputs, as a kernel does)."""
import torch
from llmopt.reference.attention import attention, attention_tiled


def naive(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    return attention(q, k, v, causal=causal, scale=scale, window=window)


def tiled(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    wide = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = attention_tiled(q.to(wide), k.to(wide), v.to(wide), causal=causal, scale=scale, window=window,
                          block_m=32, block_n=16)
    return out.to(q.dtype)
