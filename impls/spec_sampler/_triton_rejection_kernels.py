"""The rejection sampler of speculative decoding in Triton (Leviathan et al. 2023, "Fast Inference from Transformers via
Speculative Decoding"), batched over rows, any vocabulary size and strides (stride-0 expanded inputs included).
Two kernels: (1) per (row block, vocabulary chunk): the first rejected position of each row and the chunk's sum of the
row it samples from (max(0, p - q) there, or the bonus row p); (2) per row block: the chunk where u x total falls, then
the token inside it (inverse CDF), and the (T, k + 1) output.

Random numbers: one torch.rand((T, k + 1)) float32 from the caller's generator, drawn outside the kernels: u[:, i]
decides position i (kept iff u q(x) < p(x), in float64), u[:, k] picks the token (the first v with cumulative weight
> u x total)."""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from llmopt.impls._host import cdiv, next_power_of_2

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Elements of one (rows x vocabulary) tile; the interpreter runs each program in Python, so it takes fewer, larger ones.
_TILE = 16384 if _INTERPRET else 4096
_MAX_BLOCK_V = 16 if _INTERPRET else 4096  # small under the interpreter so V = 33 spans 3 chunks


@triton.jit
def _first_rejection(draft_tokens, d_t, d_k, draft_probs, q_t, q_k, q_v, target_probs, p_t, p_k, p_v, uniforms,
                     rows, row_ok, K):
    """(accepted count per row [BLOCK_T] int32): position i keeps draft x iff u[i] q(x) < p(x), compared in float64
    (u q exact for float32 inputs, so rounding never rejects a draft with p(x) >= q(x)); the first position that does
    not ends the row's kept drafts (K when none)."""
    accepted = tl.full(rows.shape, 0, tl.int32) + K
    alive = row_ok
    for i in range(K):
        x = tl.load(draft_tokens + rows * d_t + i * d_k, mask=row_ok, other=0).to(tl.int64)
        p = tl.load(target_probs + rows * p_t + i * p_k + x * p_v, mask=alive, other=1.0)
        q = tl.load(draft_probs + rows * q_t + i * q_k + x * q_v, mask=alive, other=1.0)
        u = tl.load(uniforms + rows * (K + 1) + i, mask=alive, other=0.0)
        rejected = alive & (u.to(tl.float64) * q.to(tl.float64) >= p.to(tl.float64))
        accepted = tl.where(rejected, i, accepted)
        alive = alive & ~rejected
    return accepted


@triton.jit
def _weights(draft_probs, q_t, q_k, q_v, target_probs, p_t, p_k, p_v, rows, row_ok, accepted, cols, col_ok, K,
             ACC: tl.constexpr):
    """[BLOCK_T, BLOCK_V] weights of the distribution each row samples its last token from: max(0, p - q) at the first
    rejected position, p of the bonus position when all K were kept (its q reads as 0)."""
    position = accepted.to(tl.int64)[:, None]
    inside = row_ok[:, None] & col_ok[None, :]
    p = tl.load(target_probs + rows[:, None] * p_t + position * p_k + cols[None, :] * p_v, mask=inside, other=0.0)
    q = tl.load(draft_probs + rows[:, None] * q_t + tl.minimum(position, K - 1) * q_k + cols[None, :] * q_v,
                mask=inside & (position < K), other=0.0)
    return tl.maximum(p.to(ACC) - q.to(ACC), 0.0)


@triton.jit
def _chunk_sums_kernel(draft_tokens, d_t, d_k, draft_probs, q_t, q_k, q_v, target_probs, p_t, p_k, p_v, uniforms,
                       accepted_out, partial, T, V, K, S,
                       BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, ACC: tl.constexpr):
    """Grid (cdiv(T, BLOCK_T), S): partial[row, chunk] = the chunk's sum of the row's weights; chunk 0 also stores the
    accepted count of each row."""
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < T
    rows = rows.to(tl.int64)
    chunk = tl.program_id(1)
    accepted = _first_rejection(draft_tokens, d_t, d_k, draft_probs, q_t, q_k, q_v, target_probs, p_t, p_k, p_v,
                                uniforms, rows, row_ok, K)
    if chunk == 0:
        tl.store(accepted_out + rows, accepted, mask=row_ok)
    cols = chunk.to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
    weights = _weights(draft_probs, q_t, q_k, q_v, target_probs, p_t, p_k, p_v, rows, row_ok, accepted, cols,
                       cols < V, K, ACC)
    tl.store(partial + rows * S + chunk, tl.sum(weights, axis=1), mask=row_ok)


@triton.jit
def _sample_kernel(draft_tokens, d_t, d_k, draft_probs, q_t, q_k, q_v, target_probs, p_t, p_k, p_v, uniforms,
                   accepted_in, partial, out, T, V, K, S,
                   BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_K1: tl.constexpr,
                   ACC: tl.constexpr):
    """Grid (cdiv(T, BLOCK_T),): threshold u[:, K] x total; the first chunk whose running sum passes it, then the first
    token with weight > 0 whose running sum passes it (the last positive chunk / token when rounding leaves none);
    writes the row: kept drafts, the token, -1."""
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    row_ok = rows < T
    rows = rows.to(tl.int64)
    accepted = tl.load(accepted_in + rows, mask=row_ok, other=0)
    chunks = tl.arange(0, BLOCK_S)
    sums = tl.load(partial + rows[:, None] * S + chunks[None, :], mask=row_ok[:, None] & (chunks[None, :] < S),
                   other=0.0)  # [BLOCK_T, BLOCK_S]
    threshold = tl.load(uniforms + rows * (K + 1) + K, mask=row_ok, other=0.0).to(ACC) * tl.sum(sums, axis=1)
    running = tl.cumsum(sums, axis=1)
    chunk = tl.min(tl.where((running > threshold[:, None]) & (sums > 0), chunks[None, :], BLOCK_S), axis=1)
    last_chunk = tl.max(tl.where(sums > 0, chunks[None, :], 0), axis=1)
    chunk = tl.where(chunk == BLOCK_S, last_chunk, chunk)
    before = tl.sum(tl.where(chunks[None, :] < chunk[:, None], sums, 0.0), axis=1)
    offsets = tl.arange(0, BLOCK_V)
    cols = chunk.to(tl.int64)[:, None] * BLOCK_V + offsets[None, :]  # [BLOCK_T, BLOCK_V]: each row its own chunk
    inside = row_ok[:, None] & (cols < V)
    position = accepted.to(tl.int64)[:, None]
    p = tl.load(target_probs + rows[:, None] * p_t + position * p_k + cols * p_v, mask=inside, other=0.0)
    q = tl.load(draft_probs + rows[:, None] * q_t + tl.minimum(position, K - 1) * q_k + cols * q_v,
                mask=inside & (position < K), other=0.0)
    weights = tl.maximum(p.to(ACC) - q.to(ACC), 0.0)
    running = before[:, None] + tl.cumsum(weights, axis=1)
    at = tl.min(tl.where((running > threshold[:, None]) & (weights > 0), offsets[None, :], BLOCK_V), axis=1)
    last_at = tl.max(tl.where(weights > 0, offsets[None, :], 0), axis=1)
    token = chunk.to(tl.int64) * BLOCK_V + tl.where(at == BLOCK_V, last_at, at)
    slots = tl.arange(0, BLOCK_K1)
    drafts = tl.load(draft_tokens + rows[:, None] * d_t + slots[None, :] * d_k,
                     mask=row_ok[:, None] & (slots[None, :] < K), other=-1)
    row = tl.where(slots[None, :] < accepted[:, None], drafts,
                   tl.where(slots[None, :] == accepted[:, None], token[:, None], -1))
    tl.store(out + rows[:, None] * (K + 1) + slots[None, :], row, mask=row_ok[:, None] & (slots[None, :] <= K))


def rejection_sample(draft_tokens: torch.Tensor, draft_probs: torch.Tensor, target_probs: torch.Tensor,
                     generator: torch.Generator) -> torch.Tensor:
    """draft_tokens (T, k) int64, draft_probs (T, k, V), target_probs (T, k + 1, V) float32/float64, any strides ->
    (T, k + 1) int64: kept drafts, the resampled or bonus token, -1 padding."""
    T, K = draft_tokens.shape
    V = target_probs.shape[2]
    device = draft_tokens.device
    uniforms = torch.rand((T, K + 1), generator=generator, device=device)  # (T, K + 1) float32
    block_v = min(next_power_of_2(V), _MAX_BLOCK_V)
    block_t = max(1, min(_TILE // block_v, next_power_of_2(T)))
    chunks = cdiv(V, block_v)
    acc = tl.float64 if target_probs.dtype == torch.float64 else tl.float32
    accepted = torch.empty(T, dtype=torch.int32, device=device)
    partial = torch.empty((T, chunks), dtype=torch.float64 if acc == tl.float64 else torch.float32, device=device)
    out = torch.empty((T, K + 1), dtype=torch.int64, device=device)
    inputs = (draft_tokens, *draft_tokens.stride(), draft_probs, *draft_probs.stride(), target_probs,
              *target_probs.stride(), uniforms)
    row_blocks = cdiv(T, block_t)
    _chunk_sums_kernel[(row_blocks, chunks)](*inputs, accepted, partial, T, V, K, chunks, BLOCK_T=block_t,
                                             BLOCK_V=block_v, ACC=acc, num_warps=4)
    _sample_kernel[(row_blocks,)](*inputs, accepted, partial, out, T, V, K, chunks, BLOCK_T=block_t,
                                  BLOCK_V=block_v, BLOCK_S=next_power_of_2(chunks),
                                  BLOCK_K1=next_power_of_2(K + 1), ACC=acc, num_warps=4)
    return out
