"""Fused LoRA linear in Triton, forward and backward, never forming the (out, in) update B·A (Hu et al. 2021; the
shrink/expand split of Punica and S-LoRA, with the expand fused into the GEMM epilogue). One GEMM kernel with an
optional low-rank epilogue, C = alpha·(A·B) + T·E, serves every product:
  forward   t = scaling·x·Aᵀ (M, r)                y = x·Wᵀ + t·Bᵀ
  backward  u = scaling·dy·B (M, r)   dA = uᵀ·x   dB = dyᵀ·t   dx = dy·W + u·A
t with y and u with dx in one launch each (SHRINK: the shrink in the main product's K loop) up to 32 tokens, and
up to 2048 where the shrink's operand is K-contiguous (the forward's Aᵀ of a row-major A).
Operands are any-strided (Wᵀ, dyᵀ are views); fp16/bf16/fp32 (fp32 dots in IEEE precision); fp32 accumulation."""
from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from llmopt.impls._host import Launches, autotune, cdiv, next_power_of_2

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _gemm_lowrank_kernel(
    a_ptr, b_ptr, t_ptr, e_ptr, c_ptr, s_ptr,
    M, N, K, R,
    stride_am, stride_ak, stride_bk, stride_bn, stride_tm, stride_tr, stride_er, stride_en, stride_cm, stride_cn,
    stride_sk, stride_sr,
    alpha, shrink_alpha,
    HAS_LOW_RANK: tl.constexpr, SHRINK: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr, GROUP_M: tl.constexpr,
):
    """C[M, N] = alpha · A[M, K] @ B[K, N] (+ T[M, R] @ E[R, N] when HAS_LOW_RANK), one (BLOCK_M, BLOCK_N) tile per
    program, tiles ordered in groups of GROUP_M rows so neighbouring programs share B tiles in L2. The low-rank term is
    added after the main accumulation: with E = 0 the result is bitwise that of HAS_LOW_RANK = False. SHRINK (R <=
    BLOCK_R): T is computed here, not read: T = shrink_alpha · A @ S[K, R] in the same K loop, rounded to T's dtype,
    stored by the programs of the first column of tiles, then used as above (the forward in one launch)."""
    pid = tl.program_id(0)
    tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * tiles_n)
    first_m = group * GROUP_M
    group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * tiles_n)) % group_rows
    pid_n = (pid % (GROUP_M * tiles_n)) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    offs_k = tl.arange(0, BLOCK_K)  # [BLOCK_K]
    rows_in, cols_in = offs_m < M, offs_n < N
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak  # [BLOCK_M, BLOCK_K]
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn  # [BLOCK_K, BLOCK_N]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    offs_r = tl.arange(0, BLOCK_R)  # [BLOCK_R]
    if SHRINK:
        s_ptrs = s_ptr + offs_k[:, None] * stride_sk + offs_r[None, :] * stride_sr  # [BLOCK_K, BLOCK_R]
        shrunk = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k in range(tl.cdiv(K, BLOCK_K)):
        k_in = offs_k < K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=rows_in[:, None] & k_in[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_in[:, None] & cols_in[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        if SHRINK:
            s = tl.load(s_ptrs, mask=k_in[:, None] & (offs_r < R)[None, :], other=0.0)
            shrunk = tl.dot(a, s, shrunk, input_precision=DOT_PRECISION)
            s_ptrs += BLOCK_K * stride_sk
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    acc = acc * alpha
    if SHRINK:
        t = (shrunk * shrink_alpha).to(t_ptr.dtype.element_ty)  # [BLOCK_M, BLOCK_R], as a shrink launch stores it
        t_mask = rows_in[:, None] & (offs_r < R)[None, :]
        if pid_n == 0:
            tl.store(t_ptr + offs_m[:, None] * stride_tm + offs_r[None, :] * stride_tr, t, mask=t_mask)
        e = tl.load(e_ptr + offs_r[:, None] * stride_er + offs_n[None, :] * stride_en,
                    mask=(offs_r < R)[:, None] & cols_in[None, :], other=0.0)  # [BLOCK_R, BLOCK_N]
        acc = tl.dot(t, e, acc, input_precision=DOT_PRECISION)
    elif HAS_LOW_RANK:
        for r in range(tl.cdiv(R, BLOCK_R)):
            r_in = offs_r < R - r * BLOCK_R
            t = tl.load(t_ptr + offs_m[:, None] * stride_tm + (r * BLOCK_R + offs_r)[None, :] * stride_tr,
                        mask=rows_in[:, None] & r_in[None, :], other=0.0)  # [BLOCK_M, BLOCK_R]
            e = tl.load(e_ptr + (r * BLOCK_R + offs_r)[:, None] * stride_er + offs_n[None, :] * stride_en,
                        mask=r_in[:, None] & cols_in[None, :], other=0.0)  # [BLOCK_R, BLOCK_N]
            acc = tl.dot(t, e, acc, input_precision=DOT_PRECISION)
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=rows_in[:, None] & cols_in[None, :])


class Tile(NamedTuple):
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


# Hopper (sm_90) candidates, bf16/fp16, by problem shape. Few tokens (decode: a GEMV per token) stream the weight once:
# narrow N tiles give every SM work; many tokens are a compute-bound GEMM: 128-wide tiles, 3-4 stages.
_SKINNY = [Tile(16, 32, 256, 4, 4), Tile(16, 64, 256, 4, 4), Tile(16, 64, 128, 4, 5), Tile(16, 128, 128, 4, 4),
           Tile(32, 64, 128, 4, 4)]
_WIDE = [Tile(128, 128, 64, 4, 4), Tile(128, 128, 64, 8, 3), Tile(128, 256, 64, 8, 3), Tile(64, 128, 64, 4, 4),
         Tile(128, 64, 64, 4, 4), Tile(64, 256, 64, 8, 3)]
# A rank-wide output with many rows (the shrink t = x·Aᵀ at many tokens, the backward's dB = dyᵀ·t: N = r):
# 128-wide N tiles padded r = 16 eightfold and left a few dozen programs (the H100's LoRA backward at 8192 tokens ran
# 1.6x behind peft), so narrow N tiles and more of them along M.
_NARROW = [Tile(64, 16, 128, 4, 4), Tile(128, 16, 128, 4, 4), Tile(64, 32, 128, 4, 4), Tile(32, 16, 256, 4, 4),
           Tile(128, 32, 64, 4, 4)]
_FAMILIES = {"skinny": _SKINNY, "narrow": _NARROW, "wide": _WIDE}
_SKINNY_MAX_M = 32
_NARROW_MAX_N = 64
_FLOAT32_TILE = Tile(32, 32, 32, 4, 2)  # IEEE fp32 dots run on CUDA cores: small tiles, no spills
_INTERPRETER_TILE = Tile(16, 32, 16, 4, 1)  # several programs and K steps on tiny problems
# Elements read (M·K + K·N) below which the first candidate runs instead of autotuning (verification shapes, a few
# thousand). Reads, not M·N·K: a one-token product is a GEMV that streams its weight, and its M·N·K (4.5e7 at 11008 x
# 4096) once left it on the first tile, 56.6 µs against 42.8 autotuned at 16 tokens (H100, 2026-12-06, commit 27f0bfd).
_AUTOTUNE_MIN_READS = 1 << 22
_GROUP_M = 8


def _config(tile: Tile) -> triton.Config:
    return triton.Config({"BLOCK_M": tile.block_m, "BLOCK_N": tile.block_n, "BLOCK_K": tile.block_k},
                         num_warps=tile.num_warps, num_stages=tile.num_stages)


# The autotuner keys on the problem (M, N, K) and the tensors' dtypes only, not on HAS_LOW_RANK: a call with the
# low-rank term and one without run the same tile, so B = 0 reproduces the no-adapter output bit for bit.
_AUTOTUNED = {name: autotune([_config(t) for t in tiles], ["M", "N", "K"])(_gemm_lowrank_kernel)
              for name, tiles in _FAMILIES.items()}


def _family(M: int, N: int) -> str:
    return "skinny" if M <= _SKINNY_MAX_M else "narrow" if N <= _NARROW_MAX_N else "wide"


def _fixed_tile(M: int, N: int, K: int, dtype: torch.dtype) -> Tile | None:
    if _INTERPRET:
        return _INTERPRETER_TILE
    if dtype == torch.float32:
        return _FLOAT32_TILE
    if M * K + K * N < _AUTOTUNE_MIN_READS:
        return _FAMILIES[_family(M, N)][0]
    return None


_LAUNCHES = Launches()  # launches after a key's first, without Triton's host path (impls/_host.Launches)
# A shrink (the forward's t = scaling·x·Aᵀ, the backward's u = scaling·dy·B) joins the launch of the product beside it
# (y = x·Wᵀ + t·Bᵀ, dx = dy·W + u·A: _shrink_expand) up to _SHRINK_MAX_M tokens and this rank (one BLOCK_R). Each column
# of tiles recomputes its rows' t from A in L2. Joined, the forward ran faster up to 2048 tokens (H100, 2026-12-06,
# autotuned, CUDA-graph replays: 44.8 against 54.2 µs at 512 x 4096, 131.0 against 146.1 at 2048; slower at 4096 x
# 11008).
# Above 32 tokens the tiles are 64-128 rows, whose dots Triton compiles to Hopper's wgmma reading both operands from
# shared memory; there a shrink operand contiguous along the rank (the backward's B (out, r), row-major) faulted on
# the H100: at rank 17 (BLOCK_R 32, a 64-byte swizzled [BLOCK_K, 32] tile) compute-sanitizer caught the shrink's dot
# reading shared memory out of bounds (2026-12-06, commit 849dd59; results/h100/probes/...-lora-join-crash-probe.json),
# in the backward of 33 tokens, n_in 1, n_out 16 (fp16 and bf16; fp32, IEEE dots on CUDA cores, ran all 96 shapes).
# So past 32 tokens (the 16-32-row tiles' mma.sync path, verified there in both directions) the shrink joins only when
# its operand is K-contiguous: the forward's Aᵀ of a row-major A (verified on the H100 at 445ccb9).
_SHRINK_MAX_M = 2048
_SHRINK_MAX_RANK = 64


def _launch(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, alpha: float,
            low_rank: tuple[torch.Tensor, torch.Tensor] | None, shrink: tuple[torch.Tensor, float] | None) -> None:
    """c (M, N) = alpha · a (M, K) @ b (K, N) (+ t @ e, low_rank = (t (M, R), e (R, N))), with shrink = (s (K, R),
    shrink_alpha) t written here first as shrink_alpha · a @ s. On the GPU a launch key's compiled kernel is
    relaunched directly after its first launch."""
    (M, K), N = a.shape, b.shape[1]
    t, e = low_rank if low_rank is not None else (a, b)  # placeholders, never read without the low-rank term
    s, shrink_alpha = shrink if shrink is not None else (a, 0.0)  # placeholder, never read without SHRINK
    R = t.shape[1] if low_rank is not None else 0
    tensors = (a, b, t, e, c, s)
    args = (*tensors, M, N, K, R, *a.stride(), *b.stride(), *t.stride(), *e.stride(), *c.stride(), *s.stride(),
            alpha, shrink_alpha)
    key = _LAUNCHES.key("gemm", (R > 0, shrink is not None, a.device.index), tensors, args)
    if _LAUNCHES.relaunched(key, a.device.index, args):
        return
    constexprs = {"HAS_LOW_RANK": R > 0, "SHRINK": shrink is not None,
                  "DOT_PRECISION": "ieee" if a.dtype == torch.float32 else "tf32",
                  "BLOCK_R": max(16, next_power_of_2(min(R, 64))), "GROUP_M": _GROUP_M}
    tile = _fixed_tile(M, N, K, a.dtype)
    if tile is None:
        tuner = _AUTOTUNED[_family(M, N)]
        kernel = tuner[lambda meta: (cdiv(M, meta["BLOCK_M"]) * cdiv(N, meta["BLOCK_N"]),)](*args, **constexprs)
        constexprs |= tuner.best_config.kwargs
    else:
        constexprs |= {"BLOCK_M": tile.block_m, "BLOCK_N": tile.block_n, "BLOCK_K": tile.block_k}
        kernel = _gemm_lowrank_kernel[(cdiv(M, tile.block_m) * cdiv(N, tile.block_n),)](
            *args, **constexprs, num_warps=tile.num_warps, num_stages=tile.num_stages)
    _LAUNCHES.remember(key, kernel, (cdiv(M, constexprs["BLOCK_M"]) * cdiv(N, constexprs["BLOCK_N"]), 1, 1),
                       _gemm_lowrank_kernel, args, constexprs)


def gemm_lowrank(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype, *, alpha: float = 1.0,
                 low_rank: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """alpha · a (M, K) @ b (K, N) (+ t (M, R) @ e (R, N)) -> (M, N) in out_dtype; any strides, fp32 accumulation."""
    c = torch.empty(a.shape[0], b.shape[1], dtype=out_dtype, device=a.device)
    if c.numel():
        _launch(a, b, c, alpha, low_rank, None)
    return c


def _shrink_expand(a: torch.Tensor, b: torch.Tensor, s: torch.Tensor, e: torch.Tensor, out_dtype: torch.dtype,
                   scaling: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(a (M, K) @ b (K, N) + t @ e (r, N), t) with t (M, r) = scaling · a @ s (K, r) rounded to out_dtype: in one
    launch (SHRINK: every program computes its rows' t beside its tile's product) for 1-_SHRINK_MAX_M rows of a with s
    K-contiguous (1-32 rows otherwise), ranks up to _SHRINK_MAX_RANK (one BLOCK_R) and N > 0 (a program to compute t),
    the shrink first in a launch of its own otherwise; rank 0: (a @ b, None)."""
    (M, rank), N = (a.shape[0], s.shape[1]), b.shape[1]
    max_m = _SHRINK_MAX_M if s.stride(0) == 1 else min(_SHRINK_MAX_M, _SKINNY_MAX_M)  # past 32: K-contiguous s only
    if 0 < rank <= _SHRINK_MAX_RANK and 0 < M <= max_m and N > 0:
        c = torch.empty(M, N, dtype=out_dtype, device=a.device)
        t = torch.empty(M, rank, dtype=out_dtype, device=a.device)
        _launch(a, b, c, 1.0, (t, e), (s, scaling))
        return c, t
    t = gemm_lowrank(a, s, out_dtype, alpha=scaling) if rank else None
    return gemm_lowrank(a, b, out_dtype, low_rank=(t, e) if rank else None), t


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W, A, B, scaling):
        x2 = x.reshape(-1, x.shape[-1])  # (M, in), a view when x's strides allow
        y, t = _shrink_expand(x2, W.mT, A.mT, B.mT, x.dtype, scaling)  # (M, out) = x·Wᵀ + t·Bᵀ, t = scaling·x·Aᵀ
        ctx.save_for_backward(x2, W, A, B, t)
        ctx.scaling, ctx.x_shape = scaling, x.shape
        return y.reshape(*x.shape[:-1], W.shape[0])

    @staticmethod
    def backward(ctx, dy):
        x2, W, A, B, t = ctx.saved_tensors
        dy2 = dy.reshape(-1, W.shape[0])  # (M, out)
        dx = dA = dB = None
        if ctx.needs_input_grad[0]:  # (M, in) = dy·W + u·A, u (M, r) = scaling·dy·B
            dx, u = _shrink_expand(dy2, W, B, A, dy.dtype, ctx.scaling)
            dx = dx.reshape(ctx.x_shape)
        else:
            u = gemm_lowrank(dy2, B, dy.dtype, alpha=ctx.scaling) if A.shape[0] else None
        if ctx.needs_input_grad[2]:
            dA = gemm_lowrank(u.mT, x2, A.dtype) if u is not None else torch.zeros_like(A)  # (r, in) = uᵀ·x
        if ctx.needs_input_grad[3]:
            dB = gemm_lowrank(dy2.mT, t, B.dtype) if t is not None else torch.zeros_like(B)  # (out, r) = dyᵀ·t
        return dx, None, dA, dB, None


def lora_linear(x, W, A, B, *, scaling):
    """x (..., in), W (out, in), A (r, in), B (out, r) -> (..., out) = x·Wᵀ + scaling·(x·Aᵀ)·Bᵀ;
    differentiable in x, A, B (W is frozen: no gradient is computed for it)."""
    if x.dtype not in _DTYPES:
        raise ValueError(f"triton_lora takes float16/bfloat16/float32, got {x.dtype}")
    return _LoraLinear.apply(x, W, A, B, float(scaling))
