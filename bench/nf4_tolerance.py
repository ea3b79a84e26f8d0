"""How often an NF4 matmul of a given arithmetic fails the `nf4_matmul` contract's tolerance (noise-relative: 2x the
error of dequantize-then-matmul in x's dtype, plus a floor) on the contract's kind of draws, emulated on the CPU in
float64: "levels in x's dtype" (the mma path until 7284a84: each level rounded to x's dtype, float32 block sums times
the float32 absmax), "float32 levels" (the word path: float32 level x absmax products summed in float32), "levels as two
terms of x's dtype" (the mma path since: each level as the sum of two values of x's dtype, the second the first's
rounding error, both summed by mma) and "fp16 levels" (the one-token word path for bf16 x at large weights: each level
rounded to fp16, float32 sums times the float32 absmax; drawn with bf16 x only, the one dtype it serves). All are exact-
precision arithmetics of the technique; the first rounds each weight about as much as the reference's own dequantize
does, so where the contract's eager error is small by chance (few output values) it fails now and then. With --impl, a
registered impl runs the same draws on --device instead.
`python -m llmopt.bench.nf4_tolerance [--draws N] [--seed S] [--impl NAME --device cuda]`."""
from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable

import torch
from llmopt import impls as registry
from llmopt.reference import nf4 as contract
from llmopt.reference import tolerance
from llmopt.reference.contract import PropertyFailed
from llmopt.reference.nf4_format import nf4_table

ARITHMETICS = ("levels in x's dtype", "float32 levels", "levels as two terms of x's dtype", "fp16 levels")
X_DTYPES = {"fp16 levels": ["bfloat16"]}  # an arithmetic's x dtypes where not both
_DRAWS = contract.NF4_MATMUL_DRAWS[False]  # the contract's draws on a GPU, blocks of 64 (the mma path's)
BATCHES = {"one token": [b for b in _DRAWS["batches"] if b == (1,)],
           "2+ tokens": [b for b in _DRAWS["batches"] if b != (1,)]}
ROWS = {"all rows": _DRAWS["rows"], "N <= 3": [n for n in _DRAWS["rows"] if n <= 3]}


def emulated(x: torch.Tensor, state, arithmetic: str) -> torch.Tensor:
    """x (M, K) · ŵᵀ as `arithmetic` computes it, blocks of 64 -> (M, N) in x's dtype."""
    (N, K), M = state.shape, x.shape[0]
    levels = nf4_table("cpu")
    if arithmetic == ARITHMETICS[0]:
        levels = levels.to(x.dtype)
    elif arithmetic == ARITHMETICS[2]:  # level ≈ high + low, both in x's dtype: two mmas a block, one accumulator
        high = levels.to(x.dtype)
        levels = high.double() + (levels.double() - high.double()).to(x.dtype).double()
    elif arithmetic == ARITHMETICS[3]:
        levels = levels.to(torch.float16)
    codes = contract.unpack(state.codes, N * K).reshape(N, K // 64, 64)
    weights = levels[codes].double()  # [N, blocks, 64]
    absmax = contract.dequantize_absmax(state).reshape(N, K // 64).double()
    x64 = x.double().reshape(M, K // 64, 64)
    if arithmetic != ARITHMETICS[1]:  # each block's sum in float32 (the mma), then times absmax
        sums = torch.einsum("nbk,mbk->mnb", weights, x64).float().double() * absmax[None]
    else:  # each product level x absmax in float32, then times x
        sums = torch.einsum("nbk,mbk->mnb", (weights * absmax[:, :, None]).float().double(), x64)
    return sums.sum(-1).float().to(x.dtype)


def failures(arithmetic: str | Callable, batches: list, rows: list, draws: int, seed: int,
             device: str = "cpu") -> tuple[int, float]:
    """(failing draws, largest margin) over `draws` cases of the contract's kind (K 64-512, plain or double-quantized,
    bf16 or fp16 x, or X_DTYPES[arithmetic]) on `device`: `arithmetic` one of ARITHMETICS (emulated) or an impl's
    function (x, state) -> out."""
    dtypes = X_DTYPES.get(arithmetic, ["bfloat16", "float16"])  # an impl's function: both
    compute = arithmetic if callable(arithmetic) else (
        lambda x, state: emulated(x.reshape(-1, x.shape[-1]), state, arithmetic).reshape(*x.shape[:-1], -1))
    rng = random.Random(seed)
    failed, worst = 0, 0.0
    for _ in range(draws):
        case = contract.NF4MatmulCase(rng.choice(batches), rng.choice(rows), 64 * rng.choice(_DRAWS["block_multiples"]),
                                      double_quant=rng.random() < 0.5, dtype=rng.choice(dtypes),
                                      seed=rng.randrange(2**16))
        x, state = contract.nf4_matmul_make_call(case, device).args
        out = compute(x, state)
        try:
            worst = max(worst, tolerance.noise_relative(
                "x·ŵᵀ", out, contract.nf4_matmul(x.double(), state), contract.nf4_matmul(x, state), x.dtype,
                eager_float32=lambda x=x, state=state: contract.nf4_matmul(x.float(), state)))
        except PropertyFailed:
            failed += 1
    return failed, worst


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--impl", help="a registered nf4_matmul impl to run instead of the emulations")
    parser.add_argument("--device", default="cpu", help="where --impl runs (cpu, cuda)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch sees no CUDA device")
    if args.impl:
        try:
            arithmetics = {args.impl: registry.get("nf4_matmul", args.impl, args.device).fn}
        except registry.ImplError as error:
            parser.error(str(error))
    elif args.device != "cpu":
        parser.error("the emulations run on the CPU; --device is for --impl")
    else:
        arithmetics = {name: name for name in ARITHMETICS}
    for name, arithmetic in arithmetics.items():
        for tokens, batches in BATCHES.items():
            for rows_name, rows in ROWS.items():
                failed, worst = failures(arithmetic, batches, rows, args.draws, args.seed, args.device)
                print(f"{name:19} {tokens:10} {rows_name:9}: {failed:4} of {args.draws} draws fail "
                      f"(largest passing margin {worst:.3f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
