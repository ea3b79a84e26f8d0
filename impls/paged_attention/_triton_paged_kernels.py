"""Paged decode attention in Triton (PagedAttention, Kwon et al. 2023): one query per sequence over (num_blocks,
block_size, Hkv, D) blocks; GQA-aware (one program per KV head serves its query heads); split-KV (FlashDecoding, Dao
et al. 2023) for long contexts and small batches, the chunks merged by a second kernel or ("fused" merge) by the last
chunk's program to finish. fp16/bf16/fp32, D <= 256, power-of-two blocks."""
from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from llmopt.impls._arrivals import arrival_counters, last_to_arrive
from llmopt.impls._host import autotune, cdiv, next_power_of_2

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_LOG2E = 1.4426950408889634
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_HEAD_DIM = 256
_MIN_GROUP_ROWS = 16  # tl.dot needs at least 16 rows: the query heads of a group are padded to this


@triton.jit
def _table_entries(table_row, stride_tn, offs_n, end, PAGE_SIZE: tl.constexpr):
    """The physical blocks of tokens offs_n [BLOCK_N] as int64; tokens at or past `end` read no table entry (0)."""
    return tl.load(table_row + (offs_n // PAGE_SIZE) * stride_tn, mask=offs_n < end, other=0).to(tl.int64)


@triton.jit
def _attend_tiles(acc, l_i, m_i, q, table_row, stride_tn, k_base, v_base, stride_kn, stride_ks, stride_kd,
                  stride_vn, stride_vs, stride_vd, offs_d, start, end, qk_scale,
                  HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
                  MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Online softmax over the tokens [start, end) in tiles of BLOCK_N: acc [GROUP_ROWS, BLOCK_D] (unnormalised
    output), l_i (running sum) and m_i (running max, log2 domain) [GROUP_ROWS]. Token t lives in slot t % PAGE_SIZE of
    block table_row[t // PAGE_SIZE]. One memory round trip per tile: the tile's table entries were read during the
    previous tile, and its K and V rows are requested together before the first dot needs K. MASKED tiles (the last,
    partial one) bound every K/V load by `end`, and no table entry at or past `end` is read, so nothing past it is:
    neither table entries nor cache slots."""
    arange_n = tl.arange(0, BLOCK_N)
    pages = _table_entries(table_row, stride_tn, start + arange_n, end, PAGE_SIZE)  # [BLOCK_N]
    for tile_start in range(start, end, BLOCK_N):
        offs_n = tile_start + arange_n
        slots = offs_n % PAGE_SIZE
        k_ptrs = k_base + pages[:, None] * stride_kn + slots[:, None] * stride_ks + offs_d[None, :] * stride_kd
        v_ptrs = v_base + pages[:, None] * stride_vn + slots[:, None] * stride_vs + offs_d[None, :] * stride_vd
        if MASKED:
            valid = offs_n < end
            rows = valid[:, None] & (offs_d[None, :] < HEAD_DIM)
            k = tl.load(k_ptrs, mask=rows, other=0.0)  # [BLOCK_N, BLOCK_D]
            v = tl.load(v_ptrs, mask=rows, other=0.0)  # [BLOCK_N, BLOCK_D]
        elif HEAD_DIM == BLOCK_D:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        else:
            k = tl.load(k_ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
            v = tl.load(v_ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
        pages = _table_entries(table_row, stride_tn, offs_n + BLOCK_N, end, PAGE_SIZE)  # the next tile's
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [GROUP_ROWS, BLOCK_N]
        if MASKED:
            scores = tl.where(valid[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        p = tl.math.exp2(scores - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _paged_decode_kernel(
    Q, K, V, BlockTable, SeqLens, Out, PartialOut, PartialLse, Arrivals,
    stride_qb, stride_qh, stride_qd,
    stride_kn, stride_ks, stride_kh, stride_kd,
    stride_vn, stride_vs, stride_vh, stride_vd,
    stride_tb, stride_tn, stride_sl,
    stride_ob, stride_oh, stride_od,
    num_kv_heads, num_splits, tokens_per_split, qk_scale,
    GROUP: tl.constexpr, GROUP_ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    FUSED_MERGE: tl.constexpr, MERGE_ROWS: tl.constexpr, SPLIT_CHUNK: tl.constexpr,
):
    """One program: the GROUP query heads of one (sequence, KV head) over tokens [split x tokens_per_split, ...) of
    that sequence. Without SPLIT it writes Out (B, Hq, D) in Out's dtype; with it, PartialOut (B, Hq, splits, D) fp32
    normalised over its chunk and PartialLse (B, Hq, splits) fp32 base-2 log-sum-exp, -inf for an empty chunk; with
    FUSED_MERGE too, the chunk's program that arrives last (last_to_arrive on Arrivals[sequence x KV head]) merges
    them into Out as _merge_splits_kernel does, in the same order."""
    batch_kv_head = tl.program_id(0)
    split = tl.program_id(1)
    batch = batch_kv_head // num_kv_heads
    kv_head = batch_kv_head % num_kv_heads
    seq_len = tl.load(SeqLens + batch * stride_sl)
    start = split * tokens_per_split
    end = tl.minimum(start + tokens_per_split, seq_len)
    full_end = tl.maximum(start + (end - start) // BLOCK_N * BLOCK_N, start)

    offs_g = tl.arange(0, GROUP_ROWS)
    offs_d = tl.arange(0, BLOCK_D)
    heads = kv_head * GROUP + offs_g  # [GROUP_ROWS]: the query heads reading this KV head, then padding rows
    head_rows = (offs_g < GROUP)[:, None] & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(Q + batch.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + offs_d[None, :] * stride_qd,
                mask=head_rows, other=0.0)  # [GROUP_ROWS, BLOCK_D]
    m_i = tl.full([GROUP_ROWS], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_ROWS], tl.float32)
    acc = tl.zeros([GROUP_ROWS, BLOCK_D], tl.float32)

    table_row = BlockTable + batch.to(tl.int64) * stride_tb
    k_base = K + kv_head.to(tl.int64) * stride_kh
    v_base = V + kv_head.to(tl.int64) * stride_vh
    acc, l_i, m_i = _attend_tiles(acc, l_i, m_i, q, table_row, stride_tn, k_base, v_base, stride_kn, stride_ks,
                                  stride_kd, stride_vn, stride_vs, stride_vd, offs_d, start, full_end, qk_scale,
                                  HEAD_DIM, BLOCK_D, PAGE_SIZE, BLOCK_N, False, DOT_PRECISION)
    acc, l_i, m_i = _attend_tiles(acc, l_i, m_i, q, table_row, stride_tn, k_base, v_base, stride_kn, stride_ks,
                                  stride_kd, stride_vn, stride_vs, stride_vd, offs_d, full_end, end, qk_scale,
                                  HEAD_DIM, BLOCK_D, PAGE_SIZE, BLOCK_N, True, DOT_PRECISION)

    seen = l_i > 0  # false only for an empty chunk (split > 0 past the sequence's end) and padding rows never stored
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    if SPLIT:
        row = (batch * num_kv_heads * GROUP + heads).to(tl.int64) * num_splits + split  # [GROUP_ROWS]
        tl.store(PartialOut + row[:, None] * HEAD_DIM + offs_d[None, :], out, mask=head_rows)
        tl.store(PartialLse + row, tl.where(seen, m_i + tl.math.log2(tl.where(seen, l_i, 1.0)), float("-inf")),
                 mask=offs_g < GROUP)
        if FUSED_MERGE:  # noqa: SIM102 - a constexpr: without the fused merge no counter is touched
            if last_to_arrive(Arrivals, batch_kv_head, num_splits):
                merge_heads = kv_head * GROUP + tl.arange(0, MERGE_ROWS)  # [MERGE_ROWS]: the group, unpadded
                first = (batch * num_kv_heads * GROUP + merge_heads).to(tl.int64) * num_splits
                out_ptrs = (Out + batch.to(tl.int64) * stride_ob + merge_heads[:, None] * stride_oh
                            + offs_d[None, :] * stride_od)
                _merge_rows(PartialOut, PartialLse, first, tl.arange(0, MERGE_ROWS) < GROUP, offs_d, num_splits,
                            out_ptrs, HEAD_DIM, SPLIT_CHUNK)
    else:
        tl.store(Out + batch.to(tl.int64) * stride_ob + heads[:, None] * stride_oh + offs_d[None, :] * stride_od,
                 out.to(Out.dtype.element_ty), mask=head_rows)


@triton.jit
def _merge_rows(PartialOut, PartialLse, first, rows_in, offs_d, num_splits, out_ptrs, HEAD_DIM: tl.constexpr,
                SPLIT_CHUNK: tl.constexpr):
    """out = sum_s 2^(lse_s - max) o_s / sum_s 2^(lse_s - max) in fp32 for the rows [ROWS] whose chunks start at row
    `first` of PartialLse (and of PartialOut, rows of HEAD_DIM): SPLIT_CHUNK chunks per load, so a row costs
    num_splits / SPLIT_CHUNK round trips to memory rather than one per chunk; fixed order, so the same sum every run.
    Empty chunks (lse -inf) weigh 0 and the first chunk is never empty. Stores the rows_in rows to out_ptrs
    [ROWS, BLOCK_D] in its dtype. Loads bypass L1: other SMs wrote the partials an instant ago."""
    offs_c = tl.arange(0, SPLIT_CHUNK)
    columns = offs_d < HEAD_DIM  # [BLOCK_D]
    lse_max = tl.full(first.shape, float("-inf"), tl.float32)
    for chunk in range(0, num_splits, SPLIT_CHUNK):
        inside = rows_in[:, None] & (chunk + offs_c < num_splits)[None, :]  # [ROWS, SPLIT_CHUNK]
        lse = tl.load(PartialLse + first[:, None] + chunk + offs_c[None, :], mask=inside, other=float("-inf"),
                      cache_modifier=".cg")
        lse_max = tl.maximum(lse_max, tl.max(lse, 1))
    lse_max = tl.where(rows_in, lse_max, 0.0)  # rows past the end never see -inf - -inf
    denominator = tl.zeros(first.shape, tl.float32)
    acc = tl.zeros([first.shape[0], offs_d.shape[0]], tl.float32)
    for chunk in range(0, num_splits, SPLIT_CHUNK):
        inside = rows_in[:, None] & (chunk + offs_c < num_splits)[None, :]
        rows = first[:, None] + chunk + offs_c[None, :]  # [ROWS, SPLIT_CHUNK] partial rows
        weight = tl.math.exp2(tl.load(PartialLse + rows, mask=inside, other=float("-inf"), cache_modifier=".cg")
                              - lse_max[:, None])
        denominator += tl.sum(weight, 1)
        partial = tl.load(PartialOut + rows[:, :, None] * HEAD_DIM + offs_d[None, None, :],
                          mask=inside[:, :, None] & columns[None, None, :], other=0.0,
                          cache_modifier=".cg")  # [ROWS, SPLIT_CHUNK, BLOCK_D]
        acc += tl.sum(weight[:, :, None] * partial, 1)
    out = acc / tl.where(rows_in, denominator, 1.0)[:, None]
    tl.store(out_ptrs, out.to(out_ptrs.dtype.element_ty), mask=rows_in[:, None] & columns[None, :])


@triton.jit
def _merge_splits_kernel(PartialOut, PartialLse, Out, stride_ob, stride_oh, stride_od, num_heads, num_splits,
                         HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, SPLIT_CHUNK: tl.constexpr):
    """One program per (sequence, query head), merged by _merge_rows."""
    batch_head = tl.program_id(0)
    row = batch_head + tl.arange(0, 1)  # [1]
    offs_d = tl.arange(0, BLOCK_D)
    batch, head = row // num_heads, row % num_heads
    out_ptrs = Out + batch.to(tl.int64)[:, None] * stride_ob + head[:, None] * stride_oh + offs_d[None, :] * stride_od
    _merge_rows(PartialOut, PartialLse, row.to(tl.int64) * num_splits, row >= 0, offs_d, num_splits, out_ptrs,
                HEAD_DIM, SPLIT_CHUNK)


# ----------------------------------------------------------------------------------------------- launch configs


class TileConfig(NamedTuple):
    """block_n tokens per tile, warps and software-pipeline stages of the decode kernel."""

    block_n: int
    num_warps: int
    num_stages: int


# Compiled for sm_90 with Triton 3.6 (bf16, D = 128, block 16; before the table entries were read a tile ahead): the
# K/V loads are cp.async, single-buffered, so the bytes in flight per SM come from occupancy x tile size:
# 64 x 4 warps: 128 registers, 39 KB shared, 4 programs per SM, 128 KB in flight; 128 x 8 warps: 117 registers,
# 74 KB, 2 programs, 128 KB; 256 x 8 warps: 144 KB, 1 program. No register spills beyond 12 bytes in any of them.
# The 1- and 2-stage variants leave the pipelining to _attend_tiles' own look-ahead; not yet compiled for a report.
# Calls reading at least _AUTOTUNE_MIN_BYTES of K/V autotune among these; smaller ones (latency-bound, and every case
# of a verification) run the first. float32 dots run on CUDA cores and hold operand rows in registers: 16-token
# tiles, spill-free up to D = 256. Head dims above 128 halve the 16-bit tile.
_HALF_CONFIGS = (TileConfig(64, 4, 3), TileConfig(128, 8, 3), TileConfig(32, 4, 3), TileConfig(64, 8, 3),
                 TileConfig(128, 4, 3), TileConfig(256, 8, 3), TileConfig(64, 4, 1), TileConfig(128, 8, 1),
                 TileConfig(64, 4, 2), TileConfig(128, 8, 2))
_WIDE_HEAD_CONFIG = TileConfig(32, 4, 3)
_FLOAT32_CONFIG = TileConfig(16, 4, 2)
_INTERPRETER_CONFIG = TileConfig(16, 4, 1)
_AUTOTUNE_MIN_BYTES = 1 << 24
_AUTOTUNE_KEY = ["num_kv_heads", "num_splits", "tokens_per_split", "GROUP", "HEAD_DIM", "PAGE_SIZE"]
# Split-KV: the decode kernel fits about _PROGRAMS_PER_SM programs per SM (registers); with fewer (sequences x KV
# heads) programs than that fills, each sequence is cut into that many times fewer chunks, each a multiple of
# _SPLIT_QUANTUM tokens (a multiple of every tile), at most _MAX_SPLITS. The interpreter pretends to have 2 SMs and
# 16-token chunks so that small cases split too.
_PROGRAMS_PER_SM = 4
_SPLIT_QUANTUM = 256
_MAX_SPLITS = 128
_INTERPRETER_SMS, _INTERPRETER_SPLIT_QUANTUM = 2, 16
_PINNED: dict[str, object] = {}

_AUTOTUNED_KERNEL = autotune(
    [triton.Config({"BLOCK_N": t.block_n}, num_warps=t.num_warps, num_stages=t.num_stages) for t in _HALF_CONFIGS],
    _AUTOTUNE_KEY)(_paged_decode_kernel)


MERGES = ("launch", "fused")  # split chunks merged by a second kernel, or by the last chunk's program
_DEFAULT_MERGE = "fused"  # H100, 2026-12-05 (bench/paged_splits, CUDA-graph replays): the last chunk's program
# merging was faster than a merge launch in 30 of 33 split counts x cases, e.g. batch 1 x 64k GQA 112.0 vs 116.3 µs at
# 64 splits, batch 1 x 4k 19.3 vs 20.8 µs; the slower three were batch 16 at 16k with 8-16 splits (up to 4%)
_SPLIT_CHUNK_ELEMENTS = 16  # merge rows x chunks loaded at once (each a BLOCK_D row of fp32)


def pin(tile: TileConfig | None = None, num_splits: int | None = None, merge: str | None = None) -> None:
    """Launch with `tile`, `num_splits` and/or `merge` (one of MERGES) for every call instead of the defaults (None
    restores a default)."""
    if merge is not None and merge not in MERGES:
        raise ValueError(f"merge must be one of {MERGES}, got {merge!r}")
    for key, value in (("tile", tile), ("num_splits", num_splits), ("merge", merge)):
        if value is None:
            _PINNED.pop(key, None)
        else:
            _PINNED[key] = TileConfig(*value) if key == "tile" else int(value) if key == "num_splits" else value



def _fixed_tile(dtype: torch.dtype, head_dim: int, kv_bytes: int) -> TileConfig | None:
    """The tile a call runs with when it is not autotuned (pinned, interpreter, float32, wide heads, small calls)."""
    if "tile" in _PINNED:
        return _PINNED["tile"]
    if _INTERPRET:
        return _INTERPRETER_CONFIG
    if dtype == torch.float32:
        return _FLOAT32_CONFIG
    if head_dim > 128:
        return _WIDE_HEAD_CONFIG
    return _HALF_CONFIGS[0] if kv_bytes < _AUTOTUNE_MIN_BYTES else None


def _num_sms(device: torch.device) -> int:
    if _INTERPRET:
        return _INTERPRETER_SMS
    return torch.cuda.get_device_properties(device).multi_processor_count


def split_plan(batch_kv_programs: int, longest: int, device: torch.device) -> tuple[int, int]:
    """(num_splits, tokens_per_split) for batch x KV heads programs over sequences of at most `longest` tokens."""
    quantum = _INTERPRETER_SPLIT_QUANTUM if _INTERPRET else _SPLIT_QUANTUM
    if "num_splits" in _PINNED:
        wanted = _PINNED["num_splits"]
    else:
        wanted = min(_PROGRAMS_PER_SM * _num_sms(device) // batch_kv_programs, cdiv(longest, quantum),
                     _MAX_SPLITS)
    if wanted <= 1:
        return 1, longest
    tokens_per_split = cdiv(cdiv(longest, wanted), quantum) * quantum
    return cdiv(longest, tokens_per_split), tokens_per_split


# ---------------------------------------------------------------------------------------------------- host side


def _check_inputs(q, k_cache, v_cache, block_table, seq_lens) -> None:
    if q.dtype not in _DTYPES or k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError(f"q, k_cache, v_cache must share one of {_DTYPES}; got {q.dtype}, {k_cache.dtype}, "
                         f"{v_cache.dtype}")
    block_size, D = k_cache.shape[1], q.shape[-1]
    if block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two, got {block_size}")
    if not 1 <= D <= _MAX_HEAD_DIM:
        raise ValueError(f"head dim {D} is not in [1, {_MAX_HEAD_DIM}]")
    if block_table.dtype != torch.int32 or seq_lens.dtype != torch.int32:
        raise ValueError("block_table and seq_lens must be int32")


def plan(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    """Everything that does not depend on the data, done once: the split plan (reads max(seq_lens) from the device),
    the partial-result buffers and the launch grid. Returns run() -> out (B, Hq, D) in q's dtype, which launches the
    decode kernel and, when split with the "launch" merge, the merge kernel. Shapes as in paged_decode."""
    _check_inputs(q, k_cache, v_cache, block_table, seq_lens)
    B, Hq, D = q.shape
    block_size, Hkv = k_cache.shape[1], k_cache.shape[2]
    group = Hq // Hkv
    scale = D**-0.5 if scale is None else float(scale)
    lengths = seq_lens.long()
    num_splits, tokens_per_split = split_plan(B * Hkv, int(lengths.max()), q.device)
    tile = _fixed_tile(q.dtype, D, int(lengths.sum()) * Hkv * D * 2 * k_cache.element_size())
    fused = num_splits > 1 and _PINNED.get("merge", _DEFAULT_MERGE) == "fused"
    partial_out = torch.empty((B, Hq, num_splits, D) if num_splits > 1 else (1,), dtype=torch.float32, device=q.device)
    partial_lse = torch.empty((B, Hq, num_splits) if num_splits > 1 else (1,), dtype=torch.float32, device=q.device)
    arrivals = arrival_counters(q.device, B * Hkv) if fused else partial_lse
    block_d = max(16, next_power_of_2(D))
    merge_rows = next_power_of_2(group)
    split_chunk = max(1, min(_SPLIT_CHUNK_ELEMENTS // merge_rows, next_power_of_2(num_splits)))
    constexprs = {"GROUP": group, "GROUP_ROWS": max(_MIN_GROUP_ROWS, next_power_of_2(group)), "HEAD_DIM": D,
                  "BLOCK_D": block_d, "PAGE_SIZE": block_size, "SPLIT": num_splits > 1,
                  "DOT_PRECISION": "ieee" if q.dtype == torch.float32 else "tf32",  # tf32 is ignored for 16-bit
                  "FUSED_MERGE": fused, "MERGE_ROWS": merge_rows, "SPLIT_CHUNK": split_chunk}
    if tile is None:
        kernel = _AUTOTUNED_KERNEL
    else:
        kernel = _paged_decode_kernel
        constexprs |= {"BLOCK_N": tile.block_n, "num_warps": tile.num_warps, "num_stages": tile.num_stages}

    def run():
        out = torch.empty_like(q, memory_format=torch.contiguous_format)  # (B, Hq, D)
        kernel[(B * Hkv, num_splits)](
            q, k_cache, v_cache, block_table, seq_lens, out, partial_out, partial_lse, arrivals,
            *q.stride(), *k_cache.stride(), *v_cache.stride(), *block_table.stride(), seq_lens.stride(0),
            *out.stride(), Hkv, num_splits, tokens_per_split, scale * _LOG2E, **constexprs)
        if num_splits > 1 and not fused:
            _merge_splits_kernel[(B * Hq,)](
                partial_out, partial_lse, out, *out.stride(), Hq, num_splits,
                HEAD_DIM=D, BLOCK_D=block_d, SPLIT_CHUNK=split_chunk, num_warps=4)
        return out

    return run


def paged_decode(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    """Decode attention over a paged KV cache. q (B, Hq, D); k_cache, v_cache (num_blocks, block_size, Hkv, D), any
    strides, block_size a power of two; block_table (B, max_blocks) int32; seq_lens (B,) int32, each >= 1. Returns
    (B, Hq, D) in q's dtype (float16, bfloat16 or float32; float32 dots in IEEE fp32). Query head h reads KV head
    h // (Hq // Hkv); only the first ceil(L / block_size) table entries of a row and the first L slots are read.
    Deterministic: the split merge sums in chunk order (the fused merge's atomics only count arrivals)."""
    return plan(q, k_cache, v_cache, block_table, seq_lens, scale=scale)()
