"""Fused attention softmax(Q K^T * scale + mask) V in Triton, forward and backward: FlashAttention-2 (Tri Dao,
"FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning", 2023). Variants: bottom-right
causal, sliding window (left/right), GQA/MQA, any N and M, head dim <= 256, float16/bfloat16/float32, strided inputs."""
from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from llmopt.impls._host import autotune, cdiv, next_power_of_2

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_LOG2E = 1.4426950408889634
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_HEAD_DIM = 256
_MAX_GRID_Y = 65535  # grids are (tiles along the sequence, B * heads)

# ------------------------------------------------------------------------------------------------- tile helpers


@triton.jit
def _load_rows(ptrs, rows, num_rows, cols, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
               CHECK_ROWS: tl.constexpr):
    """Load a [len(rows), BLOCK_D] tile; rows >= num_rows (checked only if CHECK_ROWS) and the head-dim padding
    columns >= HEAD_DIM read as 0."""
    if CHECK_ROWS:
        if HEAD_DIM == BLOCK_D:
            tile = tl.load(ptrs, mask=rows[:, None] < num_rows, other=0.0)
        else:
            tile = tl.load(ptrs, mask=(rows[:, None] < num_rows) & (cols[None, :] < HEAD_DIM), other=0.0)
    else:
        if HEAD_DIM == BLOCK_D:
            tile = tl.load(ptrs)
        else:
            tile = tl.load(ptrs, mask=cols[None, :] < HEAD_DIM, other=0.0)
    return tile


@triton.jit
def _store_rows(ptrs, tile, rows, num_rows, cols, HEAD_DIM: tl.constexpr):
    """Store a [len(rows), BLOCK_D] fp32 tile in the pointers' dtype, skipping padding rows and columns."""
    tl.store(ptrs, tile.to(ptrs.dtype.element_ty), mask=(rows[:, None] < num_rows) & (cols[None, :] < HEAD_DIM))


@triton.jit
def _load_row_stat(ptrs, rows, num_rows, padding, CHECK_ROWS: tl.constexpr):
    """Load a per-query-row statistic (LSE or delta) [len(rows)]; rows >= num_rows read `padding`."""
    if CHECK_ROWS:
        stat = tl.load(ptrs, mask=rows < num_rows, other=padding)
    else:
        stat = tl.load(ptrs)
    return stat


@triton.jit
def _visible(q_idx, k_idx, N_K, shift, window_left, window_right, HAS_LEFT: tl.constexpr,
             HAS_RIGHT: tl.constexpr):
    """Whether query q_idx may attend to key k_idx (broadcastable index tensors): the key exists and lies in
    [q_idx + shift - window_left, q_idx + shift + window_right], shift = N_K - N_Q (bottom-right alignment)."""
    visible = k_idx < N_K
    if HAS_LEFT:
        visible = visible & (k_idx >= q_idx + shift - window_left)
    if HAS_RIGHT:
        visible = visible & (k_idx <= q_idx + shift + window_right)
    return visible


@triton.jit
def _tile_ranges(first, last, other_len, lo_offset, hi_offset, HAS_LO: tl.constexpr, HAS_HI: tl.constexpr,
                 BLOCK: tl.constexpr):
    """Indices t in [first, last] see indices u in [t + lo_offset, t + hi_offset] of an axis of length other_len
    (a bound only where HAS_LO / HAS_HI). Returns BLOCK-aligned lo <= full_lo <= full_hi <= end: the tiles of u in
    [lo, end) are the only ones any t sees; those in [full_lo, full_hi) are seen whole by every t and lie inside
    other_len, so they need no mask. Empty when nothing is visible."""
    if HAS_LO:
        lo = tl.maximum(first + lo_offset, 0) // BLOCK * BLOCK
        full_lo = tl.cdiv(tl.maximum(last + lo_offset, 0), BLOCK) * BLOCK
    else:
        lo = 0
        full_lo = 0
    if HAS_HI:
        end = tl.cdiv(tl.minimum(tl.maximum(last + hi_offset + 1, 0), other_len), BLOCK) * BLOCK
        full_hi = tl.minimum(tl.maximum(first + hi_offset + 1, 0), other_len) // BLOCK * BLOCK
    else:
        end = tl.cdiv(other_len, BLOCK) * BLOCK
        full_hi = other_len // BLOCK * BLOCK
    full_lo = tl.minimum(tl.maximum(full_lo, lo), end)
    full_hi = tl.minimum(tl.maximum(full_hi, full_lo), end)
    return lo, full_lo, full_hi, end


# ------------------------------------------------------------------------------------------------------ forward


@triton.jit
def _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd, offs_m, offs_d,
               start, end, N_K, shift, window_left, window_right, qk_scale,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, HAS_LEFT: tl.constexpr,
               HAS_RIGHT: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Online softmax over key tiles [start, end): acc [BLOCK_M, BLOCK_D] (unnormalised output), l_i [BLOCK_M]
    (running sum), m_i [BLOCK_M] (running max, log2 domain). MASKED tiles apply the visibility mask and bound
    checks; the others are fully visible and skip both."""
    for start_n in range(start, end, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, offs_n, N_K, offs_d,
                       HEAD_DIM, BLOCK_D, MASKED)  # [BLOCK_N, BLOCK_D]
        qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
        if MASKED:
            visible = _visible(offs_m[:, None], offs_n[None, :], N_K, shift, window_left, window_right, HAS_LEFT,
                               HAS_RIGHT)
            qk = tl.where(visible, qk * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            qk = qk - m_new[:, None]
        else:
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            qk = qk * qk_scale - m_new[:, None]
        p = tl.math.exp2(qk)  # [BLOCK_M, BLOCK_N]
        alpha = tl.math.exp2(m_i - m_new)  # [BLOCK_M]
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_rows(v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, offs_n, N_K, offs_d,
                       HEAD_DIM, BLOCK_D, MASKED)  # [BLOCK_N, BLOCK_D]
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _flash_fwd_kernel(
    Q, K, V, Out, Lse,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    num_q_heads, group_size, N_Q, N_K, qk_scale, window_left, window_right,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program: BLOCK_M query rows of one (batch, query head). Out (B, Hq, N_Q, D); Lse (B, Hq, N_Q) base-2
    log-sum-exp of the scaled scores, +inf for rows that see no key (their output is 0)."""
    # last query tiles first: under a causal mask they see the most keys, so the launch's tail is short
    start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M
    batch_head = tl.program_id(1)
    batch = batch_head // num_q_heads
    head = batch_head % num_q_heads
    kv_head = head // group_size
    shift = N_K - N_Q
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)

    q_base = Q + batch.to(tl.int64) * stride_qb + head.to(tl.int64) * stride_qh
    q = _load_rows(q_base + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd, offs_m, N_Q, offs_d,
                   HEAD_DIM, BLOCK_D, True)  # [BLOCK_M, BLOCK_D]
    k_base = K + batch.to(tl.int64) * stride_kb + kv_head.to(tl.int64) * stride_kh
    v_base = V + batch.to(tl.int64) * stride_vb + kv_head.to(tl.int64) * stride_vh

    # a finite "-inf" start for the running max: a row whose keys are all masked so far computes
    # exp2(-inf - (-1e30)) = 0 and exp2(0) = 1 instead of NaN from (-inf) - (-inf)
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    last_m = tl.minimum(start_m + BLOCK_M, N_Q) - 1
    lo, full_lo, full_hi, end = _tile_ranges(start_m, last_m, N_K, shift - window_left, shift + window_right,
                                             HAS_LEFT, HAS_RIGHT, BLOCK_N)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                               offs_m, offs_d, lo, full_lo, N_K, shift, window_left, window_right, qk_scale,
                               HEAD_DIM, BLOCK_D, BLOCK_N, HAS_LEFT, HAS_RIGHT, True, DOT_PRECISION)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                               offs_m, offs_d, full_lo, full_hi, N_K, shift, window_left, window_right, qk_scale,
                               HEAD_DIM, BLOCK_D, BLOCK_N, HAS_LEFT, HAS_RIGHT, False, DOT_PRECISION)
    acc, l_i, m_i = _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd,
                               offs_m, offs_d, full_hi, end, N_K, shift, window_left, window_right, qk_scale,
                               HEAD_DIM, BLOCK_D, BLOCK_N, HAS_LEFT, HAS_RIGHT, True, DOT_PRECISION)

    empty = l_i == 0.0  # rows that saw no key
    l_safe = tl.where(empty, 1.0, l_i)
    out_base = Out + batch.to(tl.int64) * stride_ob + head.to(tl.int64) * stride_oh
    _store_rows(out_base + offs_m[:, None] * stride_on + offs_d[None, :] * stride_od, acc / l_safe[:, None],
                offs_m, N_Q, offs_d, HEAD_DIM)
    lse = tl.where(empty, float("inf"), m_i + tl.math.log2(l_safe))  # [BLOCK_M]
    tl.store(Lse + batch_head.to(tl.int64) * N_Q + offs_m, lse, mask=offs_m < N_Q)


# ----------------------------------------------------------------------------------------------------- backward


@triton.jit
def _flash_bwd_delta_kernel(
    Out, DO, Delta,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_dob, stride_doh, stride_don, stride_dod,
    num_q_heads, N_Q,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """Delta (B, Hq, N_Q) = rowsum(dO * O) in fp32: the softmax-backward correction term."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    batch_head = tl.program_id(1)
    batch = (batch_head // num_q_heads).to(tl.int64)
    head = (batch_head % num_q_heads).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    o = _load_rows(Out + batch * stride_ob + head * stride_oh + offs_m[:, None] * stride_on
                   + offs_d[None, :] * stride_od, offs_m, N_Q, offs_d, HEAD_DIM, BLOCK_D, True)
    do = _load_rows(DO + batch * stride_dob + head * stride_doh + offs_m[:, None] * stride_don
                    + offs_d[None, :] * stride_dod, offs_m, N_Q, offs_d, HEAD_DIM, BLOCK_D, True)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # [BLOCK_M]
    tl.store(Delta + batch_head.to(tl.int64) * N_Q + offs_m, delta, mask=offs_m < N_Q)


@triton.jit
def _dkdv_tiles(dk, dv, k, v, q_base, do_base, lse_base, delta_base,
                stride_qn, stride_qd, stride_don, stride_dod, offs_n, offs_d,
                start, end, N_Q, N_K, shift, window_left, window_right, qk_scale,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, HAS_LEFT: tl.constexpr,
                HAS_RIGHT: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Accumulate dk, dv [BLOCK_N, BLOCK_D] (fp32, dk without the final scale) of one key tile over query tiles
    [start, end) of one query head. Works on transposed scores [BLOCK_N, BLOCK_M] so no operand is transposed
    in registers."""
    for start_m in range(start, end, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _load_rows(q_base + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd, offs_m, N_Q, offs_d,
                       HEAD_DIM, BLOCK_D, MASKED)  # [BLOCK_M, BLOCK_D]
        lse = _load_row_stat(lse_base + offs_m, offs_m, N_Q, float("inf"), MASKED)  # [BLOCK_M]
        scores_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale - lse[None, :]
        if MASKED:
            visible = _visible(offs_m[None, :], offs_n[:, None], N_K, shift, window_left, window_right, HAS_LEFT,
                               HAS_RIGHT)
            scores_t = tl.where(visible, scores_t, float("-inf"))
        p_t = tl.math.exp2(scores_t)  # [BLOCK_N, BLOCK_M]
        do = _load_rows(do_base + offs_m[:, None] * stride_don + offs_d[None, :] * stride_dod, offs_m, N_Q, offs_d,
                        HEAD_DIM, BLOCK_D, MASKED)  # [BLOCK_M, BLOCK_D]
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        delta = _load_row_stat(delta_base + offs_m, offs_m, N_Q, 0.0, MASKED)  # [BLOCK_M]
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # [BLOCK_N, BLOCK_M]
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
    return dk, dv


@triton.jit
def _flash_bwd_dkdv_kernel(
    Q, K, V, DO, DK, DV, Lse, Delta,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    num_kv_heads, group_size, N_Q, N_K, qk_scale, scale, window_left, window_right,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program: dK, dV (B, Hkv, N_K, D) of BLOCK_N keys of one (batch, KV head), summed over the query heads
    that share it (GQA) in registers: deterministic, no atomics."""
    start_n = tl.program_id(0) * BLOCK_N
    batch_kv_head = tl.program_id(1)
    batch = batch_kv_head // num_kv_heads
    kv_head = batch_kv_head % num_kv_heads
    shift = N_K - N_Q
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)

    k_base = K + batch.to(tl.int64) * stride_kb + kv_head.to(tl.int64) * stride_kh
    v_base = V + batch.to(tl.int64) * stride_vb + kv_head.to(tl.int64) * stride_vh
    k = _load_rows(k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, offs_n, N_K, offs_d,
                   HEAD_DIM, BLOCK_D, True)  # [BLOCK_N, BLOCK_D]
    v = _load_rows(v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, offs_n, N_K, offs_d,
                   HEAD_DIM, BLOCK_D, True)  # [BLOCK_N, BLOCK_D]
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)

    # query i sees key j iff j - shift - window_right <= i <= j - shift + window_left
    last_n = tl.minimum(start_n + BLOCK_N, N_K) - 1
    lo, full_lo, full_hi, end = _tile_ranges(start_n, last_n, N_Q, -shift - window_right, -shift + window_left,
                                             HAS_RIGHT, HAS_LEFT, BLOCK_M)
    for group_member in range(group_size):
        head = kv_head * group_size + group_member
        q_base = Q + batch.to(tl.int64) * stride_qb + head.to(tl.int64) * stride_qh
        do_base = DO + batch.to(tl.int64) * stride_dob + head.to(tl.int64) * stride_doh
        row_stats = (batch * num_kv_heads * group_size + head).to(tl.int64) * N_Q
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, Lse + row_stats, Delta + row_stats,
                             stride_qn, stride_qd, stride_don, stride_dod, offs_n, offs_d,
                             lo, full_lo, N_Q, N_K, shift, window_left, window_right, qk_scale,
                             HEAD_DIM, BLOCK_D, BLOCK_M, HAS_LEFT, HAS_RIGHT, True, DOT_PRECISION)
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, Lse + row_stats, Delta + row_stats,
                             stride_qn, stride_qd, stride_don, stride_dod, offs_n, offs_d,
                             full_lo, full_hi, N_Q, N_K, shift, window_left, window_right, qk_scale,
                             HEAD_DIM, BLOCK_D, BLOCK_M, HAS_LEFT, HAS_RIGHT, False, DOT_PRECISION)
        dk, dv = _dkdv_tiles(dk, dv, k, v, q_base, do_base, Lse + row_stats, Delta + row_stats,
                             stride_qn, stride_qd, stride_don, stride_dod, offs_n, offs_d,
                             full_hi, end, N_Q, N_K, shift, window_left, window_right, qk_scale,
                             HEAD_DIM, BLOCK_D, BLOCK_M, HAS_LEFT, HAS_RIGHT, True, DOT_PRECISION)

    dk_base = DK + batch.to(tl.int64) * stride_dkb + kv_head.to(tl.int64) * stride_dkh
    dv_base = DV + batch.to(tl.int64) * stride_dvb + kv_head.to(tl.int64) * stride_dvh
    _store_rows(dk_base + offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd, dk * scale, offs_n, N_K,
                offs_d, HEAD_DIM)
    _store_rows(dv_base + offs_n[:, None] * stride_dvn + offs_d[None, :] * stride_dvd, dv, offs_n, N_K, offs_d,
                HEAD_DIM)


@triton.jit
def _dq_tiles(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd, offs_m, offs_d,
              start, end, N_K, shift, window_left, window_right, qk_scale,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, HAS_LEFT: tl.constexpr,
              HAS_RIGHT: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Accumulate dq [BLOCK_M, BLOCK_D] (fp32, without the final scale) of one query tile over key tiles
    [start, end)."""
    for start_n in range(start, end, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(k_base + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, offs_n, N_K, offs_d,
                       HEAD_DIM, BLOCK_D, MASKED)  # [BLOCK_N, BLOCK_D]
        v = _load_rows(v_base + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, offs_n, N_K, offs_d,
                       HEAD_DIM, BLOCK_D, MASKED)  # [BLOCK_N, BLOCK_D]
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale - lse[:, None]
        if MASKED:
            visible = _visible(offs_m[:, None], offs_n[None, :], N_K, shift, window_left, window_right, HAS_LEFT,
                               HAS_RIGHT)
            scores = tl.where(visible, scores, float("-inf"))
        p = tl.math.exp2(scores)  # [BLOCK_M, BLOCK_N]
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)
    return dq


@triton.jit
def _flash_bwd_dq_kernel(
    Q, K, V, DO, DQ, Lse, Delta,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_dqb, stride_dqh, stride_dqn, stride_dqd,
    num_q_heads, group_size, N_Q, N_K, qk_scale, scale, window_left, window_right,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program: dQ (B, Hq, N_Q, D) of BLOCK_M query rows of one (batch, query head)."""
    start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M  # heaviest tiles first, as in the forward
    batch_head = tl.program_id(1)
    batch = batch_head // num_q_heads
    head = batch_head % num_q_heads
    kv_head = head // group_size
    shift = N_K - N_Q
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)

    q_base = Q + batch.to(tl.int64) * stride_qb + head.to(tl.int64) * stride_qh
    do_base = DO + batch.to(tl.int64) * stride_dob + head.to(tl.int64) * stride_doh
    q = _load_rows(q_base + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd, offs_m, N_Q, offs_d,
                   HEAD_DIM, BLOCK_D, True)  # [BLOCK_M, BLOCK_D]
    do = _load_rows(do_base + offs_m[:, None] * stride_don + offs_d[None, :] * stride_dod, offs_m, N_Q, offs_d,
                    HEAD_DIM, BLOCK_D, True)  # [BLOCK_M, BLOCK_D]
    lse = _load_row_stat(Lse + batch_head.to(tl.int64) * N_Q + offs_m, offs_m, N_Q, float("inf"), True)
    delta = _load_row_stat(Delta + batch_head.to(tl.int64) * N_Q + offs_m, offs_m, N_Q, 0.0, True)
    k_base = K + batch.to(tl.int64) * stride_kb + kv_head.to(tl.int64) * stride_kh
    v_base = V + batch.to(tl.int64) * stride_vb + kv_head.to(tl.int64) * stride_vh
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    last_m = tl.minimum(start_m + BLOCK_M, N_Q) - 1
    lo, full_lo, full_hi, end = _tile_ranges(start_m, last_m, N_K, shift - window_left, shift + window_right,
                                             HAS_LEFT, HAS_RIGHT, BLOCK_N)
    dq = _dq_tiles(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd, offs_m,
                   offs_d, lo, full_lo, N_K, shift, window_left, window_right, qk_scale,
                   HEAD_DIM, BLOCK_D, BLOCK_N, HAS_LEFT, HAS_RIGHT, True, DOT_PRECISION)
    dq = _dq_tiles(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd, offs_m,
                   offs_d, full_lo, full_hi, N_K, shift, window_left, window_right, qk_scale,
                   HEAD_DIM, BLOCK_D, BLOCK_N, HAS_LEFT, HAS_RIGHT, False, DOT_PRECISION)
    dq = _dq_tiles(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_kd, stride_vn, stride_vd, offs_m,
                   offs_d, full_hi, end, N_K, shift, window_left, window_right, qk_scale,
                   HEAD_DIM, BLOCK_D, BLOCK_N, HAS_LEFT, HAS_RIGHT, True, DOT_PRECISION)

    dq_base = DQ + batch.to(tl.int64) * stride_dqb + head.to(tl.int64) * stride_dqh
    _store_rows(dq_base + offs_m[:, None] * stride_dqn + offs_d[None, :] * stride_dqd, dq * scale, offs_m, N_Q,
                offs_d, HEAD_DIM)


# ----------------------------------------------------------------------------------------------- launch configs


class TileConfig(NamedTuple):
    """One launch configuration: block_m query rows and block_n key rows per tile (in every kernel)."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# Autotuned on the GPU for float16/bfloat16: (tile, largest padded head dim it is tried for). Checked by compiling
# for sm_90 with Triton 3.6: no register spills (at most a few bytes) up to that head dim, in bfloat16 with a causal
# mask. Each list is pruned per call to the tiles whose shared memory fits (_config_pruner).
_AUTOTUNE_CONFIGS: dict[str, tuple[tuple[TileConfig, int], ...]] = {
    "forward": (
        (TileConfig(128, 128, 8, 3), 128),
        (TileConfig(128, 64, 8, 3), 128),
        (TileConfig(128, 64, 8, 4), 128),
        (TileConfig(64, 64, 4, 3), 128),
        (TileConfig(128, 64, 8, 2), 256),
        (TileConfig(64, 32, 4, 2), 256),
    ),
    "backward_dkdv": (
        (TileConfig(32, 128, 8, 3), 128),
        (TileConfig(64, 128, 8, 2), 64),
        (TileConfig(64, 64, 8, 2), 128),
        (TileConfig(16, 64, 8, 2), 256),
    ),
    "backward_dq": (
        (TileConfig(128, 32, 4, 4), 64),
        (TileConfig(128, 64, 8, 3), 128),
        (TileConfig(128, 32, 8, 4), 128),
        (TileConfig(64, 32, 8, 2), 256),
    ),
}
# float32 dots run in IEEE fp32 on CUDA cores (no tensor cores), which hold whole operand rows in registers: bigger
# tiles spill kilobytes per thread on sm_90. One small tile for every kernel and head dim, no autotuning.
_FLOAT32_CONFIG = TileConfig(16, 16, 4, 2)
# Under TRITON_INTERPRET=1: one small fixed tile per kernel (block_m != block_n to exercise the tile geometry).
_INTERPRETER_CONFIGS = {
    "forward": TileConfig(32, 16, 4, 1),
    "backward_dkdv": TileConfig(16, 32, 4, 1),
    "backward_dq": TileConfig(32, 16, 4, 1),
}
_AUTOTUNE_KEY = ["N_Q", "N_K", "HEAD_DIM", "HAS_LEFT", "HAS_RIGHT"]  # the autotuner adds the tensors' dtypes
# Below this many query x key pairs a problem runs with the first candidate tile that fits instead of autotuning: the
# many small shapes of a verification would each autotune (compile every candidate) for a launch of microseconds.
_AUTOTUNE_MIN_PAIRS = 1 << 20
_SHARED_MEMORY_BUDGET = 227 * 1024  # bytes: Hopper's per-block maximum
_DELTA_BLOCK_M = 64
_PINNED: dict[str, TileConfig] = {}


def _shared_memory_bytes(kernel: str, tile: TileConfig, block_d: int, element_size: int) -> int:
    """Tiles loaded once per program + num_stages buffers of the tiles loaded per loop step (matches what Triton 3.6
    allocates for sm_90 to within 1 KB)."""
    resident_rows, streamed_rows = {
        "forward": (tile.block_m, 2 * tile.block_n),  # q; k, v
        "backward_dkdv": (2 * tile.block_n, 2 * tile.block_m),  # k, v; q, dO
        "backward_dq": (2 * tile.block_m, 2 * tile.block_n),  # q, dO; k, v
    }[kernel]
    return (resident_rows + tile.num_stages * streamed_rows) * block_d * element_size


def _config_pruner(kernel: str, candidates: list[tuple[TileConfig, triton.Config, int]]):
    """early_config_prune for `kernel`: keep the candidates made for this head dim whose shared memory fits (at
    least one does for every head dim <= 256 in 16-bit dtypes)."""

    def prune(configs, named_args, **kwargs):
        block_d, element_size = kwargs["BLOCK_D"], named_args["Q"].element_size()
        return [config for tile, config, max_block_d in candidates
                if block_d <= max_block_d
                and _shared_memory_bytes(kernel, tile, block_d, element_size) <= _SHARED_MEMORY_BUDGET]

    return prune


def _triton_config(tile: TileConfig) -> triton.Config:
    return triton.Config({"BLOCK_M": tile.block_m, "BLOCK_N": tile.block_n}, num_warps=tile.num_warps,
                         num_stages=tile.num_stages)


def _autotuned(kernel: str, fn):
    candidates = [(tile, _triton_config(tile), max_block_d) for tile, max_block_d in _AUTOTUNE_CONFIGS[kernel]]
    return autotune([config for _, config, _ in candidates], _AUTOTUNE_KEY,
                    prune_configs_by={"early_config_prune": _config_pruner(kernel, candidates)})(fn)


_KERNELS = {
    "forward": _flash_fwd_kernel,
    "backward_dkdv": _flash_bwd_dkdv_kernel,
    "backward_dq": _flash_bwd_dq_kernel,
}
_AUTOTUNED_KERNELS = {kernel: _autotuned(kernel, fn) for kernel, fn in _KERNELS.items()}


def pin_config(kernel: str, tile: TileConfig | None) -> None:
    """Launch `kernel` ("forward", "backward_dkdv" or "backward_dq") with `tile` for every dtype, instead of
    autotuning (or the interpreter's or float32's tile); None restores the default."""
    if kernel not in _KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {sorted(_KERNELS)}")
    if tile is None:
        _PINNED.pop(kernel, None)
    else:
        _PINNED[kernel] = TileConfig(*tile)


def _fixed_tile(kernel: str, dtype: torch.dtype, pairs: int, block_d: int) -> TileConfig | None:
    """The tile `kernel` runs with when it is not autotuned: pinned, else the interpreter's, else float32's, else
    for problems under _AUTOTUNE_MIN_PAIRS query x key pairs the first candidate that fits the head dim."""
    if kernel in _PINNED:
        return _PINNED[kernel]
    if _INTERPRET:
        return _INTERPRETER_CONFIGS[kernel]
    if dtype == torch.float32:
        return _FLOAT32_CONFIG
    if pairs < _AUTOTUNE_MIN_PAIRS:
        return next(tile for tile, max_block_d in _AUTOTUNE_CONFIGS[kernel] if block_d <= max_block_d
                    and _shared_memory_bytes(kernel, tile, block_d, dtype.itemsize) <= _SHARED_MEMORY_BUDGET)
    return None


def _launch(kernel: str, dtype: torch.dtype, pairs: int, grid, *args, **constexprs) -> None:
    """Run `kernel` (inputs of `dtype`, a problem of `pairs` query x key pairs) with its fixed tile if it has one,
    else through the autotuner."""
    tile = _fixed_tile(kernel, dtype, pairs, constexprs["BLOCK_D"])
    if tile is None:
        _AUTOTUNED_KERNELS[kernel][grid](*args, **constexprs)
    else:
        _KERNELS[kernel][grid](*args, **constexprs, BLOCK_M=tile.block_m, BLOCK_N=tile.block_n,
                               num_warps=tile.num_warps, num_stages=tile.num_stages)


# ---------------------------------------------------------------------------------------------------- host side


class _Visibility(NamedTuple):
    """The mask as the kernels take it: key j visible to query i iff j in [i+M-N-left, i+M-N+right], each bound
    applied only when has_left / has_right (causal is right = 0)."""

    left: int
    right: int
    has_left: bool
    has_right: bool


def _visibility(causal: bool, window: tuple[int, int]) -> _Visibility:
    left, right = (int(bound) for bound in window)
    if left < -1 or right < -1:
        raise ValueError(f"window bounds must be >= 0, or -1 for unbounded; got {tuple(window)}")
    if causal:
        right = 0  # causal intersected with any right bound >= 0 is the bound 0
    return _Visibility(max(left, 0), max(right, 0), left >= 0, right >= 0)


def _kernel_constexprs(head_dim: int, dtype: torch.dtype, visibility: _Visibility) -> dict:
    return {"HEAD_DIM": head_dim, "BLOCK_D": max(16, next_power_of_2(head_dim)),
            "HAS_LEFT": visibility.has_left, "HAS_RIGHT": visibility.has_right,
            "DOT_PRECISION": "ieee" if dtype == torch.float32 else "tf32"}  # tf32 is ignored for 16-bit inputs


def _forward(q, k, v, scale: float, visibility: _Visibility):
    """q (B, Hq, N, D), k/v (B, Hkv, M, D) -> out (B, Hq, N, D), lse (B, Hq, N) fp32 in base 2."""
    B, Hq, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    out = torch.empty((B, Hq, N, D), dtype=q.dtype, device=q.device)  # (B, Hq, N, D)
    lse = torch.empty((B, Hq, N), dtype=torch.float32, device=q.device)  # (B, Hq, N)
    _launch("forward", q.dtype, N * M, lambda meta: (cdiv(N, meta["BLOCK_M"]), B * Hq),
            q, k, v, out, lse, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            Hq, Hq // Hkv, N, M, scale * _LOG2E, visibility.left, visibility.right,
            **_kernel_constexprs(D, q.dtype, visibility))
    return out, lse


def _backward(grad_out, q, k, v, out, lse, scale: float, visibility: _Visibility):
    """grad_out (B, Hq, N, D) -> dq (B, Hq, N, D), dk and dv (B, Hkv, M, D), in the inputs' dtypes."""
    B, Hq, N, D = q.shape
    Hkv, M = k.shape[1], k.shape[2]
    constexprs = _kernel_constexprs(D, q.dtype, visibility)
    delta = torch.empty_like(lse)  # (B, Hq, N)
    _flash_bwd_delta_kernel[(cdiv(N, _DELTA_BLOCK_M), B * Hq)](
        out, grad_out, delta, *out.stride(), *grad_out.stride(), Hq, N,
        HEAD_DIM=D, BLOCK_D=constexprs["BLOCK_D"], BLOCK_M=_DELTA_BLOCK_M)
    dq = torch.empty((B, Hq, N, D), dtype=q.dtype, device=q.device)  # (B, Hq, N, D)
    dk = torch.empty((B, Hkv, M, D), dtype=k.dtype, device=k.device)  # (B, Hkv, M, D)
    dv = torch.empty((B, Hkv, M, D), dtype=v.dtype, device=v.device)  # (B, Hkv, M, D)
    _launch("backward_dkdv", q.dtype, N * M, lambda meta: (cdiv(M, meta["BLOCK_N"]), B * Hkv),
            q, k, v, grad_out, dk, dv, lse, delta,
            *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *dk.stride(), *dv.stride(),
            Hkv, Hq // Hkv, N, M, scale * _LOG2E, scale, visibility.left, visibility.right, **constexprs)
    _launch("backward_dq", q.dtype, N * M, lambda meta: (cdiv(N, meta["BLOCK_M"]), B * Hq),
            q, k, v, grad_out, dq, lse, delta,
            *q.stride(), *k.stride(), *v.stride(), *grad_out.stride(), *dq.stride(),
            Hq, Hq // Hkv, N, M, scale * _LOG2E, scale, visibility.left, visibility.right, **constexprs)
    return dq, dk, dv


class _FlashAttention(torch.autograd.Function):
    """Forward saves q, k, v, out and lse (B, Hq, N) fp32: the per-row log-sum-exp of the scaled scores in base 2
    (natural LSE x log2(e)), +inf for rows with no visible key so that their recomputed probabilities are 0.
    Backward recomputes the probabilities tile by tile and returns contiguous dq, dk, dv."""

    @staticmethod
    def forward(ctx, q, k, v, scale: float, visibility: _Visibility):
        out, lse = _forward(q, k, v, scale, visibility)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.visibility = scale, visibility
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(grad_out, q, k, v, out, lse, ctx.scale, ctx.visibility)
        return dq, dk, dv, None, None


def _check_inputs(q, k, v) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise ValueError(f"expected q (B, Hq, N, D) and k, v (B, Hkv, M, D); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    (B, Hq, N, D), (Bk, Hkv, M, Dk) = q.shape, k.shape
    if B != Bk or D != Dk or Hq % Hkv or N < 1 or M < 1:
        raise ValueError(f"incompatible shapes q {tuple(q.shape)}, k/v {tuple(k.shape)}: need equal B and D, "
                         "Hq a multiple of Hkv, N and M >= 1")
    if not 1 <= D <= _MAX_HEAD_DIM:
        raise ValueError(f"head dim {D} is not in [1, {_MAX_HEAD_DIM}]")
    if B * Hq > _MAX_GRID_Y:
        raise ValueError(f"B * Hq = {B * Hq} exceeds the CUDA grid's second dimension ({_MAX_GRID_Y})")
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"dtypes {q.dtype}, {k.dtype}, {v.dtype}: need one of {_DTYPES} for all three")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"devices differ: {q.device}, {k.device}, {v.device}")


def flash_attention(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    """softmax(q k^T * scale + mask) v, differentiable in q, k, v.

    q: (B, Hq, N, D); k, v: (B, Hkv, M, D) with Hq % Hkv == 0 (query head h reads KV head h // (Hq // Hkv)),
    any strides. Returns (B, Hq, N, D) in q's dtype (float16, bfloat16 or float32; float32 dots run in true IEEE
    fp32, input_precision="ieee", not TF32). Accumulation is fp32.
    scale: default D ** -0.5, must be >= 0.
    causal: query i sees key j iff j <= i + M - N (bottom-right aligned).
    window (left, right): keeps keys j in [i + M - N - left, i + M - N + right], -1 = unbounded on that side;
    intersected with causal. A query row with no visible key returns 0 and gets zero gradients.
    Deterministic: forward and backward use no atomics (GQA dk/dv are summed over the group in registers).
    """
    _check_inputs(q, k, v)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if not scale >= 0:
        raise ValueError(f"scale must be >= 0, got {scale}")
    return _FlashAttention.apply(q, k, v, scale, _visibility(causal, window))
