"""Correct decode loops held to the kv_cache contract as user impls: no cache at all (every step recomputes the whole
prefix and keeps its last logits) and a cache allocated once for the whole sequence (one chunk of T positions)."""
import dataclasses

import torch
from llmopt.reference.kv_cache import KVCache, forward_tokens


def recompute_every_step(weights, config, tokens, *, prompt_len):
    steps = [forward_tokens(weights, config, tokens[:, :prompt_len], 0)]
    for t in range(prompt_len, tokens.shape[1]):
        steps.append(forward_tokens(weights, config, tokens[:, :t + 1], 0)[:, -1:])
    return torch.cat(steps, 1)


def preallocated_cache(weights, config, tokens, *, prompt_len):
    whole = dataclasses.replace(config, cache_chunk=tokens.shape[1])
    cache = KVCache(whole, tokens.shape[0], weights["lm_head.weight"].dtype, tokens.device)
    steps = [forward_tokens(weights, whole, tokens[:, :prompt_len], 0, cache)]
    for t in range(prompt_len, tokens.shape[1]):
        steps.append(forward_tokens(weights, whole, tokens[:, t:t + 1], t, cache))
    return torch.cat(steps, 1)
