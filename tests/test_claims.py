"""The claims ledger: every group of the seed's quantitative claims is in it, each with a legal verdict; claims about
techniques not built yet say "not yet checked" and carry no figure; the ZeRO table's arithmetic; `llmopt claims`
writes the table."""
from __future__ import annotations

from llmopt.bench.claims import ZERO_SEED_GB, all_claims, pending_claims, zero_claims
from llmopt.bench.cli import main
from llmopt.reference.contract import VERDICTS

# The groups the ledger must hold (by id prefix), whatever their verdict today.
REQUIRED = ("kv_cache.llama3_70b.", "lora.trainable.", "zero.memory.", "lora.memory.qlora", "nf4.bits_per_parameter.",
            "attention.utilization.fa1", "attention.utilization.fa2", "attention.utilization.fa3",
            "spec_decoding.speedup",
            "paged_attention.vllm_throughput", "checkpointing.overhead", "checkpointing.memory",
            "linear_attention.crossover")


def test_every_required_claim_is_in_the_ledger_with_a_legal_verdict():
    claims = all_claims()
    ids = [c.id for c in claims]
    assert len(ids) == len(set(ids)), "claim ids are unique"
    for prefix in REQUIRED:
        assert any(i.startswith(prefix) for i in ids), f"no claim {prefix}* in the ledger"
    assert all(c.verdict in VERDICTS for c in claims)


def test_pending_claims_carry_no_figure():
    for claim in pending_claims():
        assert claim.verdict == "not yet checked" and claim.ours is None


def test_zero_table_arithmetic():
    by_id = {c.id: c for c in zero_claims()}
    assert set(ZERO_SEED_GB) == {"none", "stage 1", "stage 2", "stage 3"}
    assert all(by_id[f"zero.memory.{s.replace(' ', '')}"].verdict == "confirmed" for s in ZERO_SEED_GB)
    wrong_gpus = {c.id: c for c in zero_claims(gpus=4)}  # the seed's column is for 8 GPUs: 4 must not match
    assert wrong_gpus["zero.memory.stage3"].verdict == "wrong" and wrong_gpus["zero.memory.none"].verdict == "confirmed"
    assert by_id["zero.bytes_per_parameter"].verdict == "wrong"


def test_claims_command_writes_the_table(tmp_path):
    out = tmp_path / "claims.md"
    assert main(["claims", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| zero.memory.stage1 |" in text and "**not yet checked**" in text
