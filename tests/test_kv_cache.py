"""KV cache and GQA/MQA: the chunk-growing cache (formula bytes at capacity, NaN past the length), cached decode over
growth boundaries, GQA = MHA with repeated K/V heads (decoder weights; CPU attention over the attention contract's
cases), the mean-pool conversion, validation, claims."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from llmopt.impls import discover
from llmopt.reference import attention as attention_contract
from llmopt.reference.contract import Call
from llmopt.reference.kv_cache import (
    CONTRACT,
    EXAMPLES,
    LLAMA3_70B,
    MIXED_UNITS,
    SEED_LLAMA3_70B_TABLE,
    DecodeCase,
    KVCache,
    check_decode_call,
    claims,
    decode_with_cache,
    decoder_logits,
    hf_dynamic_cache_bytes,
    kv_cache_bytes,
    make_call,
    mean_pool_kv_heads,
    random_weights,
    repeat_kv_heads,
    weight_shapes,
)

GQA = DecodeCase(2, 6, 19, 50, 32, 2, 8, 2, 4, 64, cache_chunk=4, dtype="float64", seed=11)


def test_cache_grows_in_chunks_and_poisons_spare_slots():
    config = GQA.config
    cache = KVCache(config, batch=2, dtype=torch.float64, device="cpu")
    capacities = []
    for step, n in enumerate([6, 1, 1, 1, 4, 1]):  # prefill 6, then decode steps and a 4-token append
        k = torch.full((2, config.n_kv_heads, n, config.head_dim), float(step))
        keys, values = cache.extend(0, k, -k)
        capacities.append(cache.keys[0].shape[2])
        assert keys.shape[2] == values.shape[2] == cache.lengths[0] and not keys.isnan().any()
    assert capacities == [8, 8, 8, 12, 16, 16]  # whole chunks of 4, grown only when full
    assert keys[0, 0, :, 0].tolist() == [0.0] * 6 + [1.0, 2.0, 3.0] + [4.0] * 4 + [5.0]  # copies kept every position
    assert cache.keys[0][:, :, cache.lengths[0]:].isnan().all()  # spare positions are NaN, never read
    layer_bytes = kv_cache_bytes(1, config.n_kv_heads, config.head_dim, 16, 2, 8)
    assert cache.keys[0].untyped_storage().nbytes() + cache.values[0].untyped_storage().nbytes() == layer_bytes


@pytest.mark.parametrize("case", EXAMPLES[:3], ids=lambda c: f"prompt{c.prompt_len}-T{c.T}-chunk{c.cache_chunk}")
def test_decode_crosses_growth_boundaries_and_matches_recompute(case):
    weights, config, tokens = make_call(dataclasses.replace(case, dtype="float64"), "cpu").args
    logits, cache = decode_with_cache(weights, config, tokens, prompt_len=case.prompt_len)
    grown_at_prefill = -(-case.prompt_len // case.cache_chunk) * case.cache_chunk
    assert cache.keys[0].shape[2] == -(-case.T // case.cache_chunk) * case.cache_chunk > grown_at_prefill
    torch.testing.assert_close(logits, decoder_logits(weights, config, tokens), rtol=0, atol=1e-12)


def test_gqa_decoder_equals_mha_decoder_with_repeated_kv_heads():
    weights, config, tokens = make_call(GQA, "cpu").args
    mha_weights, mha_config = repeat_kv_heads(weights, config)
    assert mha_config.n_kv_heads == config.n_heads and CONTRACT.validate(Call((mha_weights, mha_config, tokens),
                                                                              {"prompt_len": 3})) is None
    torch.testing.assert_close(decoder_logits(mha_weights, mha_config, tokens), decoder_logits(weights, config, tokens),
                               rtol=0, atol=1e-12)
    _, gqa_cache = decode_with_cache(weights, config, tokens, prompt_len=GQA.prompt_len)
    _, mha_cache = decode_with_cache(mha_weights, mha_config, tokens, prompt_len=GQA.prompt_len)
    assert gqa_cache.allocated_bytes() * config.n_heads == mha_cache.allocated_bytes() * config.n_kv_heads


@pytest.mark.parametrize("name", ["reference", "sdpa_math", "sdpa_flash_cpu"])
def test_gqa_attention_equals_mha_with_repeated_kv_heads(name):
    impl = dataclasses.replace(discover("attention")["sdpa_math"], supports={})  # every feature of the contract
    attn = attention_contract.attention if name == "reference" else discover("attention")[name].fn

    @settings(max_examples=12)
    @given(attention_contract.cases(impl, "cpu").filter(lambda c: c.Hq != c.Hkv and c.N * c.M <= 97 * 255))
    def holds(case):
        q, k, v = attention_contract.make_call(case, "cpu").args
        group = case.Hq // case.Hkv
        gqa = attn(q, k, v, causal=case.causal, scale=case.scale, window=case.window)
        mha = attn(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), causal=case.causal,
                   scale=case.scale, window=case.window)
        assert torch.equal(gqa, mha), f"{name}: query head h must read KV head h // {group}"

    holds()


def test_mean_pool_conversion():
    mha = dataclasses.replace(GQA, n_kv_heads=8)
    weights, config, tokens = make_call(mha, "cpu").args
    same, same_config = mean_pool_kv_heads(weights, config, 8)
    assert same_config == config and all(torch.equal(same[n], weights[n]) for n in weights)  # Hkv = Hq: MHA back
    pooled, pooled_config = mean_pool_kv_heads(weights, config, 2)
    k = weights["model.layers.1.self_attn.k_proj.weight"].view(8, 4, -1)
    torch.testing.assert_close(pooled["model.layers.1.self_attn.k_proj.weight"].view(2, 4, -1),
                               torch.stack([k[0:4].mean(0), k[4:8].mean(0)]), rtol=0, atol=0)  # consecutive groups
    query = "model.layers.1.self_attn.q_proj.weight"
    assert torch.equal(pooled[query], weights[query])
    # a GQA model written as MHA (heads repeated) pools back to itself exactly (groups of 4: exact means)
    gqa_weights, gqa_config = make_call(GQA, "cpu").args[:2]
    back, back_config = mean_pool_kv_heads(*repeat_kv_heads(gqa_weights, gqa_config), gqa_config.n_kv_heads)
    assert back_config == gqa_config and all(torch.equal(back[n], gqa_weights[n]) for n in gqa_weights)
    _, mha_cache = decode_with_cache(weights, config, tokens, prompt_len=5)
    _, gqa_cache = decode_with_cache(pooled, pooled_config, tokens, prompt_len=5)
    assert gqa_cache.allocated_bytes() * 4 == mha_cache.allocated_bytes()  # Hkv / Hq = 2 / 8
    with pytest.raises(ValueError, match="must divide"):
        mean_pool_kv_heads(weights, config, 3)


def test_validation_names_what_was_expected():
    weights, config, tokens = make_call(EXAMPLES[0], "cpu").args
    good = {"prompt_len": 4}
    check_decode_call(Call((weights, config, tokens), good))
    bad_calls = {
        "prompt_len must be": Call((weights, config, tokens), {"prompt_len": 0}),
        "token ids must lie": Call((weights, config, tokens + config.vocab_size), good),
        "int64": Call((weights, config, tokens.int()), good),
        "exactly weight_shapes": Call(({n: w for n, w in weights.items() if "lm_head" not in n}, config, tokens), good),
        "has shape": Call((weights | {"model.norm.weight": torch.ones(3, dtype=torch.float64)}, config, tokens), good),
        "multiple of n_kv_heads": Call((weights, dataclasses.replace(config, n_kv_heads=3), tokens), good),
        "one floating dtype": Call((weights | {"lm_head.weight": weights["lm_head.weight"].float()}, config, tokens),
                                   good),
    }
    for message, call in bad_calls.items():
        with pytest.raises(ValueError, match=message):
            check_decode_call(call)


def test_hf_dynamic_cache_holds_the_formula():
    pytest.importorskip("transformers")
    for seq_len, batch in ((7, 3), (4096, 32)):
        assert hf_dynamic_cache_bytes(3, 8, 128, seq_len, batch, torch.float16) == kv_cache_bytes(3, 8, 128, seq_len,
                                                                                                  batch, 2)


def test_hf_llama_prepared_decode_is_its_call():
    """The benchmark times hf_llama's prepared run (the model built beforehand): it must compute what the call does."""
    pytest.importorskip("transformers")
    impl = discover("kv_cache")["hf_llama"]
    call = make_call(dataclasses.replace(GQA, dtype="float32"), "cpu")
    run, to_contract = impl.prepare(*call.args, **call.kwargs)
    assert torch.equal(to_contract(run()), impl.fn(*call.args, **call.kwargs))


def test_claims():
    ledger = {c.id: c for c in claims()}
    table = [c for i, c in ledger.items() if i.startswith("kv_cache.llama3_70b.")]
    assert len(table) == 6 and all(c.verdict == "wrong" for c in table)  # the seed's cells are ~2x the formula
    assert "1.342 GB = 1.25 GiB" in ledger["kv_cache.llama3_70b.seq4096.batch1"].ours
    for (seq_len, batch), (seed_value, unit) in SEED_LLAMA3_70B_TABLE.items():  # the seed's arithmetic, explained
        doubled = 2 * kv_cache_bytes(**LLAMA3_70B, seq_len=seq_len, batch=batch) / MIXED_UNITS[unit]
        assert doubled == pytest.approx(seed_value, rel=5e-3)
    for name in ("memory_formula", "gqa.cache_fraction", "mqa.cache_fraction", "no_cache_redundant_kv"):
        assert ledger[f"kv_cache.{name}"].verdict == "confirmed", ledger[f"kv_cache.{name}"]
    assert ledger["kv_cache.gqa.cache_fraction"].ours.startswith("0.25 ")
    assert ledger["kv_cache.mqa.cache_fraction"].ours.startswith("0.125 ")


def test_random_weights_follow_the_llama_names():
    weights = random_weights(GQA.config, 0, torch.float32)
    assert {n: tuple(w.shape) for n, w in weights.items()} == weight_shapes(GQA.config)


