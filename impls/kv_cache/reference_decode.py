"""Registered impl: the in-house prefill + token-by-token decode through the chunk-growing KVCache of
reference/kv_cache.py (the seed's section 2.1 as plain PyTorch)."""
from llmopt.impls import register


@register("kv_cache", "reference_decode", kind="reference", devices=("cpu", "cuda"))
def reference_decode(weights, config, tokens, *, prompt_len):
    from llmopt.reference.kv_cache import decode_with_cache

    return decode_with_cache(weights, config, tokens, prompt_len=prompt_len)[0]
