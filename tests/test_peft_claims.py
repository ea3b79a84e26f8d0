"""The seed's LoRA / QLoRA numbers (section 3) recounted: peft's count of trainable parameters on LLaMA-7B built on the
meta device equals r·(in + out) over the seven projections of 32 layers, and the memory ledger is the per-parameter
bytes it states."""
from __future__ import annotations

import pytest
from llmopt.reference import lora

GB = 1e9


@pytest.fixture(scope="module")
def claims():
    pytest.importorskip("peft")
    pytest.importorskip("transformers")
    return {c.id: c for c in lora.lora_claims()}


def _closed_form(rank: int) -> int:
    hidden, intermediate, layers = 4096, 11008, 32
    attention = 4 * rank * (hidden + hidden)  # q, k, v, o: 4096 x 4096
    mlp = 3 * rank * (hidden + intermediate)  # gate, up: 4096 -> 11008; down: 11008 -> 4096
    return layers * (attention + mlp)


def test_trainable_parameters_counted_by_peft_equal_the_closed_form(claims):
    model = lora.llama7b_on_meta()
    base = sum(p.numel() for p in model.parameters())
    assert base == 6_738_415_616
    for rank in (8, 16, 32, 64):
        trainable, total = lora.lora_trainable(model, rank)
        assert trainable == _closed_form(rank) and total == base + trainable
        claim = claims[f"lora.trainable.r{rank}"]
        assert claim.ours.startswith(f"{100 * trainable / base:.3f}%")
    assert _closed_form(16) == 39_976_960  # the seed's 29.4M counts 2·4096·16 for gate/up/down too
    assert claims["lora.trainable.r16"].verdict == "wrong"


def test_memory_ledger_is_bytes_per_parameter(claims):
    model = lora.llama7b_on_meta()
    base = sum(p.numel() for p in model.parameters())
    memory = lora.finetuning_memory(model, _closed_form(16))
    assert sum(memory["full"].values()) == 16 * base
    assert sum(memory["lora"].values()) == 2 * base + 16 * _closed_form(16)
    projections = sum(p.numel() for n, p in model.named_parameters() if any(f".{k}." in n for k in lora.PROJECTIONS))
    nf4_bits = 8 * (memory["qlora"]["weights"] - 2 * _closed_form(16) - 2 * (base - projections)) / projections
    assert abs(nf4_bits - (4 + 8 / 64 + 32 / (64 * 256))) < 1e-3
    assert claims["lora.memory.full"].verdict == "wrong"  # the seed leaves out 13.5 GB of gradients
    assert claims["lora.memory.lora"].verdict == "confirmed"
    assert claims["lora.memory.qlora"].verdict == "wrong"  # embeddings and head stay in bf16; the adapter's Adam state
    assert f"{sum(memory['qlora'].values()) / GB:.2f} GB" in claims["lora.memory.qlora"].ours
