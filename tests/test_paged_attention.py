"""PagedAttention: the block manager against a model of the logical sequences, validation and the layouts the
properties build, the Triton kernel's split plan, split-KV, strides and
wide groups (interpreter), the memory-waste simulation, claims."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from llmopt.impls import discover
from llmopt.reference.contract import Call
from llmopt.reference.paged_attention import (
    CONTRACT,
    EXAMPLES,
    BlockManager,
    OutOfBlocks,
    PagedCase,
    PagedKVCache,
    check_paged_call,
    claims,
    logical_query,
    logical_sequence,
    make_call,
    paged_attention,
    relabel_blocks,
    request_lengths,
    simulate_waste,
    unshared_layout,
    used_slots,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # Triton: compiled on a GPU, interpreted on CPU

# --------------------------------------------------------------------------------------------------- block manager


def test_append_allocates_only_when_the_last_block_is_full():
    manager = BlockManager(6, 4, order=[5, 3, 1, 0, 2, 4])
    manager.add("a")
    assert manager.append("a", 3) == ([], [(5, 0, 3)])
    assert manager.append("a", 6) == ([], [(5, 3, 4), (3, 0, 4), (1, 0, 1)])
    assert manager.block_table("a") == [5, 3, 1] and manager.num_free == 3 and manager.lengths["a"] == 9
    manager.free("a")
    assert manager.num_free == 6 and manager.refcount == [0] * 6
    with pytest.raises(ValueError, match="permutation"):
        BlockManager(3, 4, order=[0, 0, 1])


def test_fork_shares_blocks_and_copies_the_partial_one_on_write():
    manager = BlockManager(8, 4)
    manager.add("parent")
    manager.append("parent", 6)  # blocks 0 (full), 1 (2 of 4)
    manager.fork("parent", "child")
    assert manager.refcount[:2] == [2, 2]
    copies, runs = manager.append("child", 3)  # writes into the shared partial block: copy it first
    assert copies == [(1, 2)] and runs == [(2, 2, 4), (3, 0, 1)]
    assert manager.block_table("child") == [0, 2, 3] and manager.refcount[:4] == [2, 1, 1, 1]
    assert manager.append("parent", 1) == ([], [(1, 2, 3)])  # the parent's block is its own again: no copy
    manager.free("parent")
    assert manager.refcount[:4] == [1, 0, 1, 1] and 1 in manager.free_blocks


def test_prefix_sharing_takes_only_full_blocks():
    manager = BlockManager(8, 4)
    manager.add("a")
    manager.append("a", 10)  # blocks 0, 1 full, 2 partial
    assert manager.share_prefix("a", "b", 9) == 8  # 9 tokens asked: the 2 full blocks
    assert manager.block_table("b") == [0, 1] and manager.refcount[:3] == [2, 2, 1]
    assert manager.append("b", 1) == ([], [(3, 0, 1)])  # a fresh block, never the partial one of "a"
    manager.add("c")
    with pytest.raises(OutOfBlocks):
        manager.append("c", 17)


@settings(max_examples=30)
@given(st.lists(st.tuples(st.sampled_from(["add", "append", "fork", "share", "free"]), st.integers(0, 4),
                          st.integers(0, 4), st.integers(1, 11)), min_size=1, max_size=25),
       st.sampled_from([1, 3, 4]))
def test_random_operations_keep_every_sequence_exact(ops, block_size):
    """A random program of operations on a PagedKVCache agrees with a plain dict of token lists: every sequence reads
    back its own tokens (copy-on-write never lets one write show in another), reference counts equal the number of
    tables holding a block, and freeing everything returns every block."""
    order = torch.randperm(64, generator=torch.Generator().manual_seed(1)).tolist()
    manager = BlockManager(64, block_size, order=order)
    cache = PagedKVCache(manager, torch.zeros(64, block_size, 1, 1), torch.zeros(64, block_size, 1, 1))
    model: dict[int, list[float]] = {}
    counter = iter(range(1, 10**6))
    for op, a, b, n in ops:
        if op == "add" and a not in model:
            manager.add(a)
            model[a] = []
        elif op == "append" and a in model and manager.num_free >= -(-n // block_size) + 1:
            tokens = [float(next(counter)) for _ in range(n)]
            cache.append(a, torch.tensor(tokens)[:, None, None], -torch.tensor(tokens)[:, None, None])
            model[a] += tokens
        elif op == "fork" and a in model and b not in model:
            manager.fork(a, b)
            model[b] = list(model[a])
        elif op == "share" and a in model and b not in model:
            shared = manager.share_prefix(a, b, n)
            model[b] = model[a][:shared]
        elif op == "free" and a in model:
            manager.free(a)
            del model[a]
        for seq, tokens in model.items():
            k, v = cache.gather(seq)
            assert k.flatten().tolist() == tokens and v.flatten().tolist() == [-t for t in tokens]
        holders = [sum(block in table for table in manager.tables.values()) for block in range(64)]
        assert manager.refcount == holders and manager.num_free == holders.count(0)
    for seq in list(model):
        manager.free(seq)
    assert manager.num_free == 64


# --------------------------------------------------------------------------------------------------- the contract


def test_validation():
    call = make_call(EXAMPLES[0], "cpu")
    q, k, v, table, lens = call.args
    check_paged_call(call)
    bad = {
        "must be >= 1": Call((q, k, v, table, torch.tensor([32, 0, 1], dtype=torch.int32)), {}),
        "must be int32": Call((q, k, v, table.long(), lens), {}),
        "lie in \\[0, num_blocks": Call((q, k, v, torch.where(table == table[0, 0], k.shape[0], table), lens), {}),
        "exceeds the table": Call((q, k, v, table[:, :1], lens), {}),
        "Hq % Hkv": Call((q[:, :3], k, v, table, lens), {}),
        "share a floating dtype": Call((q.double(), k, v, table, lens), {}),
        "finite number": Call(call.args, {"scale": float("inf")}),
        "number >= 0": Call(call.args, {"scale": -0.3}),
    }
    for message, wrong in bad.items():
        with pytest.raises(ValueError, match=message):
            check_paged_call(wrong)


def test_entries_past_the_last_block_are_never_read():
    call = make_call(EXAMPLES[0], "cpu")
    q, k, v, table, lens = call.args
    scrambled = table.clone()
    scrambled[0, 2:] = -7  # sequence 0 uses 2 blocks of 16: the rest of its row is arbitrary
    scrambled[2, 1:] = 2**30
    check_paged_call(Call((q, k, v, scrambled, lens), {}))
    assert torch.equal(paged_attention(q, k, v, scrambled, lens), paged_attention(q, k, v, table, lens))


@pytest.mark.parametrize("case", [EXAMPLES[1], EXAMPLES[5], EXAMPLES[7]],
                         ids=["fork-cow", "fork-bf16", "fork-shared-tail"])
def test_layout_transformations_keep_the_logical_sequences(case):
    """The calls the properties build (physical blocks moved, forks unshared) hold the same logical sequences, and the
    paged layout really shares blocks and leaves unused slots: the properties test something."""
    call = make_call(case, "cpu")
    moved = relabel_blocks(call, torch.randperm(call.args[1].shape[0], generator=torch.Generator().manual_seed(3)))
    unshared = unshared_layout(call)
    for transformed in (call, moved, unshared):
        check_paged_call(transformed)
        assert torch.equal(paged_attention(*transformed.args), paged_attention(*call.args))
    _, k, _, table, lens = unshared.args
    for b in range(case.B):
        logical_k = logical_sequence(case, b, "cpu")[0]
        assert torch.equal(k[table[b, : -(-int(lens[b]) // case.block_size)].long()].flatten(0, 1)[:int(lens[b])],
                           logical_k)
    used = used_slots(call)
    assert int(used.sum()) < used.numel() and int(used_slots(unshared).sum()) > int(used.sum())  # sharing saved slots


def test_key_offset_only_shifts_the_scores():
    """A key_offset case attends as the same case without it (softmax ignores a shift of all of a head's scores), yet
    its scores leave the range where float32 exp stays finite without the running max, above and below."""
    case = dataclasses.replace(EXAMPLES[7], dtype="float64")
    torch.testing.assert_close(paged_attention(*make_call(case, "cpu").args),
                               paged_attention(*make_call(dataclasses.replace(case, key_offset=0.0), "cpu").args),
                               rtol=0, atol=1e-9)
    q = logical_query(case, "cpu")
    top = []  # each (sequence, query head)'s largest score
    for b in range(case.B):
        k = logical_sequence(case, b, "cpu")[0].repeat_interleave(case.Hq // case.Hkv, 1)  # (L, Hq, D)
        top.append((torch.einsum("hd,lhd->hl", q[b], k) * case.D**-0.5).amax(1))
    top = torch.cat(top)
    assert float(top.max()) > 88 and float(top.min()) < -104  # exp overflows / every exp underflows in float32




# --------------------------------------------------------------------------------------------------- Triton kernel


@pytest.fixture
def kernels():
    pytest.importorskip("triton")
    reason = discover("paged_attention")["triton_paged"].unavailable_reason(DEVICE)
    if reason:
        pytest.skip(reason)
    from llmopt.impls.paged_attention import _triton_paged_kernels

    yield _triton_paged_kernels
    _triton_paged_kernels.pin()


def test_split_plan(kernels):
    device = torch.device(DEVICE)
    quantum = kernels._INTERPRETER_SPLIT_QUANTUM if kernels._INTERPRET else kernels._SPLIT_QUANTUM
    for programs, longest in ((1, 1), (1, 5 * quantum + 1), (3, 40 * quantum), (10**6, 10**6)):
        splits, per_split = kernels.split_plan(programs, longest, device)
        assert splits == -(-longest // per_split) and splits <= kernels._MAX_SPLITS
        assert splits == 1 or per_split % quantum == 0
        assert (splits - 1) * per_split < longest  # no chunk starts past every sequence


@pytest.mark.filterwarnings("ignore:Conversion of an array with ndim > 0:DeprecationWarning")
@pytest.mark.parametrize("case,num_splits", [
    (PagedCase(2, 4, 2, 24, 8, (57, 8), shared_prefix=8, dtype="float32", seed=1), 4),  # D not a power of 2
    (PagedCase(1, 32, 1, 16, 64, (130,), dtype="float16", seed=2), 3),  # MQA, 32 heads; block > tile
    (PagedCase(3, 6, 3, 32, 4, (16, 17, 1), scale=0.3, dtype="float32", seed=3), 6),  # empty chunks of short rows
], ids=["odd-head-dim", "mqa-32", "empty-chunks"])
def test_triton_split_kv_and_strided_cache(kernels, case, num_splits):
    call = make_call(case, DEVICE)
    q, k, v, table, lens = call.args
    # the cache as a view into a wider buffer (a slot stride of 2 Hkv D, NaN between): strides are honoured
    wide_k = torch.full((k.shape[0], k.shape[1], 2 * k.shape[2], k.shape[3]), float("nan"), dtype=k.dtype,
                        device=k.device)
    wide_k[:, :, ::2] = k
    expected = paged_attention(*[t.double().cpu() if t.is_floating_point() else t.cpu() for t in call.args],
                               scale=case.scale)
    for splits in (1, num_splits):
        for merge in kernels.MERGES:  # a second kernel, or the last chunk's program (arrival counter re-armed)
            kernels.pin(num_splits=splits, merge=merge)
            for _ in range(2):
                out = kernels.paged_decode(q, wide_k[:, :, ::2], v, table, lens, scale=case.scale)
                tolerance = (2e-3 if case.dtype == "float16" else 2e-6) * max(1.0, float(expected.abs().max()))
                torch.testing.assert_close(out.double().cpu(), expected, rtol=0, atol=tolerance)
    with pytest.raises(ValueError, match="merge"):
        kernels.pin(merge="atomic")


# --------------------------------------------------------------------------------------------------- memory waste


def test_waste_simulation():
    lengths = request_lengths("uniform", 1000, 2048, seed=3)
    report = simulate_waste(lengths, 2048, 16)
    assert report.tokens == int(lengths.sum()) and report.contiguous_reserved == 1000 * 2048
    assert report.paged_reserved == 16 * int(((lengths + 15) // 16).sum())  # what the block manager allocated
    assert 0 <= report.paged_reserved - report.tokens < 16 * 1000  # at most one partial block per request
    assert 0.45 < report.contiguous_waste < 0.55 and report.paged_waste < 0.01  # uniform: half the reservation idle
    tailed = simulate_waste(request_lengths("long_tailed", 1000, 2048, seed=3), 2048, 16)
    assert tailed.contiguous_waste > 0.85 and tailed.paged_waste < 0.1
    assert simulate_waste([1], 16, 16).paged_waste == pytest.approx(15 / 16)  # the per-request bound is one block
    with pytest.raises(ValueError, match="max_len"):
        simulate_waste([2049], 2048, 16)
    with pytest.raises(ValueError, match="distribution"):
        request_lengths("zipf", 10, 100)


def test_claims():
    ledger = {c.id: c for c in claims()}
    assert len(ledger) == len(claims())
    assert ledger["paged_attention.example.request_200_of_4096"].verdict == "confirmed"
    assert ledger["paged_attention.example.request_1500_of_4096"].verdict == "confirmed"
    assert ledger["paged_attention.utilization"].verdict == "confirmed"
    assert ledger["paged_attention.contiguous_waste"].verdict == "not checkable here"
    assert "means requests use 20-40% of the reserved maximum" in ledger["paged_attention.contiguous_waste"].ours


def test_bench_cases_and_cost():
    assert len(CONTRACT.bench_cases) == 24 and {c.dtype for c in CONTRACT.bench_cases} == {"bfloat16"}
    case = PagedCase(2, 32, 8, 128, 16, (100, 28), dtype="bfloat16")
    cost = CONTRACT.cost(case, "fwd")
    assert cost.bytes == 2 * 128 * 8 * 128 * 2 + 2 * 2 * 32 * 128 * 2 and cost.flops == 4 * 32 * 128 * 128
    assert dataclasses.replace(case, lengths=(64,)).seq_lens == (64, 64)
