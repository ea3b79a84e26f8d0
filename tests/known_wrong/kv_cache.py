"""Known-wrong KV cache decode loops, each with one classic bug; `llmopt verify kv_cache --impl FILE:FUNC` must reject
every one on CPU. Each is the reference decoder (forward_tokens) driven through a hand-written cache or loop, as a
serving engineer would write it: zero-initialised buffers grown in chunks of config.cache_chunk positions."""
import copy
import dataclasses

import torch
from llmopt.reference.kv_cache import forward_tokens


class _ChunkedCache:
    """Per layer K/V buffers (B, Hkv, capacity, hd) grown in whole chunks; `keep_on_growth(valid)` is how many of the
    valid positions a growth copies, `visible(length, capacity)` how many positions attention is given."""

    def __init__(self, config, batch, dtype, keep_on_growth=lambda valid: valid,
                 visible=lambda length, capacity: length, store_decoded=True):
        shape = (batch, config.n_kv_heads, 0, config.head_dim)
        self.chunk, self.keep, self.visible = config.cache_chunk, keep_on_growth, visible
        self.store_decoded = store_decoded
        self.k = [torch.zeros(shape, dtype=dtype) for _ in range(config.n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype) for _ in range(config.n_layers)]
        self.length = [0] * config.n_layers

    def extend(self, layer, k, v):
        start, end = self.length[layer], self.length[layer] + k.shape[2]
        if not self.store_decoded and start > 0:  # a decode step: attend to the cache plus this token, store nothing
            return (torch.cat([self.k[layer][:, :, :start], k], 2), torch.cat([self.v[layer][:, :, :start], v], 2))
        if end > self.k[layer].shape[2]:
            capacity = -(-end // self.chunk) * self.chunk
            for buffers in (self.k, self.v):
                grown = torch.zeros(*buffers[layer].shape[:2], capacity, buffers[layer].shape[3], dtype=k.dtype)
                kept = self.keep(start)
                grown[:, :, :kept] = buffers[layer][:, :, :kept]
                buffers[layer] = grown
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        self.length[layer] = end
        shown = self.visible(end, self.k[layer].shape[2])
        return self.k[layer][:, :, :shown], self.v[layer][:, :, :shown]


def _decode(weights, config, tokens, prompt_len, cache, position=lambda t: t):
    steps = [forward_tokens(weights, config, tokens[:, :prompt_len], 0, cache)]
    for t in range(prompt_len, tokens.shape[1]):
        steps.append(forward_tokens(weights, config, tokens[:, t:t + 1], position(t), cache))
    return torch.cat(steps, 1)


def _cache(weights, config, tokens, **bug):
    return _ChunkedCache(config, tokens.shape[0], weights["lm_head.weight"].dtype, **bug)


def loses_position_at_growth(weights, config, tokens, *, prompt_len):
    """Growing the buffer copies the valid positions but the last (an off-by-one in the copy's end)."""
    cache = _cache(weights, config, tokens, keep_on_growth=lambda valid: max(valid - 1, 0))
    return _decode(weights, config, tokens, prompt_len, cache)


def attends_to_whole_capacity(weights, config, tokens, *, prompt_len):
    """Hands attention the whole allocated buffer, zero-filled spare positions included, not the valid length."""
    cache = _cache(weights, config, tokens, visible=lambda length, capacity: capacity)
    return _decode(weights, config, tokens, prompt_len, cache)


def forgets_decoded_tokens(weights, config, tokens, *, prompt_len):
    """Stores the prompt's keys and values but never a decoded token's: step t sees the prompt and itself only."""
    cache = _cache(weights, config, tokens, store_decoded=False)
    return _decode(weights, config, tokens, prompt_len, cache)


def rope_position_restarts(weights, config, tokens, *, prompt_len):
    """Rotates each decoded token's query and key at position 0 instead of its position in the sequence."""
    return _decode(weights, config, tokens, prompt_len, _cache(weights, config, tokens), position=lambda t: 0)


class _HeadPerQuery:
    """Hands attention one K/V head per query head, KV head heads[h] for query head h (an MHA-layout read of a GQA
    cache, for a kernel without GQA)."""

    def __init__(self, cache, heads):
        self.cache, self.heads = cache, heads

    def extend(self, layer, k, v):
        k, v = self.cache.extend(layer, k, v)
        return k[:, self.heads], v[:, self.heads]


def gqa_group_padded_to_power_of_two(weights, config, tokens, *, prompt_len):
    """Expands the KV heads for the query heads with the group rounded up to a power of two (a packed kernel's
    padding taken for the group): h // group for groups of 1, 2, 4, but with 3 query head 3 reads KV head 0."""
    group = config.n_heads // config.n_kv_heads
    padded = 1 << (group - 1).bit_length()
    heads = (torch.arange(config.n_heads) // padded).clamp(max=config.n_kv_heads - 1)
    return _decode(weights, config, tokens, prompt_len, _HeadPerQuery(_cache(weights, config, tokens), heads))


class _Last32(_ChunkedCache):
    """Hands attention only the last 32 positions."""

    def extend(self, layer, k, v):
        return tuple(t[:, :, -32:] for t in super().extend(layer, k, v))


def cache_capped_at_32_positions(weights, config, tokens, *, prompt_len):
    """A cache of at most 32 positions that drops the oldest past it (a fixed max_position taken as a sliding
    window): exact for sequences up to 32 tokens."""
    cache = _Last32(config, tokens.shape[0], weights["lm_head.weight"].dtype)
    return _decode(weights, config, tokens, prompt_len, cache)


def hard_coded_rope_theta(weights, config, tokens, *, prompt_len):
    """Rotates with theta 10000 (LLaMA 2's) whatever config.rope_theta says (500000 in LLaMA 3)."""
    config = dataclasses.replace(config, rope_theta=10000.0)
    return _decode(weights, config, tokens, prompt_len, _cache(weights, config, tokens))


def folds_norms_into_weights_in_place(weights, config, tokens, *, prompt_len):
    """Folds each RMSNorm weight into the projections it feeds, in the caller's tensors, and sets the norm to 1: the
    same logits, but the caller's weights are changed."""
    for i in range(config.n_layers):
        p = f"model.layers.{i}."
        for norm, fed in (("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                          ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"))):
            for name in fed:
                weights[f"{p}{name}.weight"].mul_(weights[f"{p}{norm}.weight"])
            weights[f"{p}{norm}.weight"].fill_(1)
    return _decode(weights, config, tokens, prompt_len, _cache(weights, config, tokens))


_PROMPTS = {}


def prefix_cache_keyed_on_prompt_tokens(weights, config, tokens, *, prompt_len):
    """Reuses the prompt's logits and K/V from an earlier call with the same prompt tokens and config (a prefix cache
    whose key leaves out the model): right for one model per process."""
    key = (config, weights["lm_head.weight"].dtype, tuple(tokens[:, :prompt_len].flatten().tolist()))
    if key not in _PROMPTS:
        cache = _cache(weights, config, tokens)
        _PROMPTS[key] = forward_tokens(weights, config, tokens[:, :prompt_len], 0, cache), cache
    prompt_logits, stored = _PROMPTS[key]
    cache = copy.deepcopy(stored)
    steps = [prompt_logits] + [forward_tokens(weights, config, tokens[:, t:t + 1], t, cache)
                               for t in range(prompt_len, tokens.shape[1])]
    return torch.cat(steps, 1)
