"""Hugging Face transformers' LlamaForCausalLM, built locally from a LlamaConfig (no hub) and loaded with the
contract's weights (named as Llama names them): prefill, then token-by-token decode through its DynamicCache;
`prepare` builds the model outside the timed region, so a benchmark times the decode alone. Not float64: Llama's
RMSNorm computes in float32 and its RoPE tables are float32 whatever the model's dtype."""
from __future__ import annotations

from llmopt.impls import register


def llama_model(weights: dict, config, max_positions: int):
    """A LlamaForCausalLM of `config` (a DecoderConfig) holding `weights`, in their dtype and on their device, eval."""
    from transformers import LlamaConfig, LlamaForCausalLM

    weight = weights["lm_head.weight"]
    hf_config = LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.dim, intermediate_size=config.hidden_dim,
        num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads, num_key_value_heads=config.n_kv_heads,
        head_dim=config.head_dim, rms_norm_eps=config.norm_eps, max_position_embeddings=max_positions,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta}, tie_word_embeddings=False,
        attention_bias=False, mlp_bias=False)
    # built in the weights' dtype (its float32 RoPE frequencies stay float32, as from_pretrained leaves them)
    model = LlamaForCausalLM._from_config(hf_config, dtype=weight.dtype).to(weight.device)
    model.load_state_dict(weights, strict=True)
    return model.eval()


def hf_decode(weights, config, tokens, *, prompt_len):
    """(logits (B, T, vocab) in the weights' dtype, the DynamicCache after the last token)."""
    return decode(llama_model(weights, config, tokens.shape[1]), tokens, prompt_len)


def decode(model, tokens, prompt_len: int):
    """Prefill tokens[:, :prompt_len] (B, T) int64, then one token at a time through a fresh DynamicCache:
    (logits (B, T, vocab) in the model's dtype, the cache)."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        steps = [model(input_ids=tokens[:, :prompt_len], past_key_values=cache, use_cache=True).logits]
        for t in range(prompt_len, tokens.shape[1]):
            steps.append(model(input_ids=tokens[:, t:t + 1], past_key_values=cache, use_cache=True).logits)
    return torch.cat(steps, dim=1).to(model.lm_head.weight.dtype), cache


def prepare(weights, config, tokens, *, prompt_len):
    model = llama_model(weights, config, tokens.shape[1])
    return (lambda: decode(model, tokens, prompt_len)[0]), lambda logits: logits


@register("kv_cache", "hf_llama", kind="library", devices=("cpu", "cuda"), requires=("transformers",),
          prepare=prepare, supports={"dtypes": ("float32", "bfloat16", "float16")})
def hf_llama(weights, config, tokens, *, prompt_len):
    return hf_decode(weights, config, tokens, prompt_len=prompt_len)[0]
