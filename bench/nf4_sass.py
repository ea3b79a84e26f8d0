"""Static view of the in-house NF4 matmul (QLoRA's NF4 format, Dettmers et al. 2023) on sm_90, no GPU needed: every
candidate tile of the one-token word path (words and chunks), the 2-16-token mma path and the dot path (its fallback)
compiled for bf16 x, with and without double quantization; its main loop's SASS instructions per weight element by
opcode, registers, spills and shared memory. `python -m llmopt.bench.nf4_sass OUT_DIR` writes OUT_DIR/nf4_sass.json
(`--first`: each path's first tile only)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from llmopt.bench.results import write_document
from llmopt.bench.sass import compile_sass

RESULT_FILE = "nf4_sass.json"
_POINTERS = {"x_ptr": "*bf16", "x_pairs_ptr": "*i32", "codes_ptr": "*u8", "words_ptr": "*i32", "scales_ptr": "*fp32",
             "offset_ptr": "*fp32", "table_ptr": "*fp32", "dynamic_ptr": "*fp32", "out_ptr": "*bf16",
             "partial_ptr": "*fp32", "arrivals_ptr": "*i32"}
# a launch on the benchmark shapes: sizes and row strides multiples of 16, unit strides specialized to 1
_DIVISIBLE = (*_POINTERS, "absmax_ptr", "N", "K", "stride_xm", "stride_codes", "stride_om")
_TOKENS = {False: 1, True: 16}


def tile_record(use_dot: bool, tile, double_quant: bool, overrides: dict | None = None) -> dict:
    """One tile's compiled figures (constexprs as a launch sets them, then `overrides`); per-element counts divide the
    main loop by the weight elements a thread takes per step (BLOCK_N x BLOCK_K / threads)."""
    from llmopt.impls.nf4_matmul import _triton_nf4_matmul_kernels as kernels

    levels = kernels._level_format(use_dot, True, torch.bfloat16, 28672 * 8192)  # the benchmark's largest weight
    constexprs = (kernels.path_constexprs(use_dot, True, torch.bfloat16, 64, double_quant, levels)
                  | kernels.tile_constexprs(tile, levels) | {"stride_xk": 1, "stride_on": 1} | (overrides or {}))
    if not use_dot:
        constexprs["M"] = 1  # Triton specializes an integer argument equal to 1
    pointers = _POINTERS | {"absmax_ptr": "*u8" if double_quant else "*fp32"}
    figures = compile_sass(kernels._nf4_matmul_kernel, pointer_types=pointers, constexprs=constexprs,
                           divisible_by_16=_DIVISIBLE, num_warps=tile.num_warps, num_stages=tile.num_stages)
    elements = tile.block_n * tile.block_k / (32 * tile.num_warps)
    return {"path": "dot" if use_dot else "words", "tokens": _TOKENS[use_dot], "double_quant": double_quant,
            "tile": {"block_n": tile.block_n, "block_k": tile.block_k, "num_warps": tile.num_warps,
                     "num_stages": tile.num_stages, "prefetch": tile.prefetch, "chunks": tile.chunks},
            **_per_element(figures, elements)}


def _per_element(figures: dict, elements: float) -> dict:
    """compile_sass's figures with the main loop's instructions and opcodes divided by the weight elements a thread
    takes in one iteration."""
    return {"elements_per_thread_step": elements,
            "loop_instructions_per_element": round(figures["loop_instructions"] / elements, 3),
            "loop_ops_per_element": {op: round(n / elements, 3) for op, n in figures["loop_ops"].items()}, **figures}


def mma_tile_record(tile, tokens: int, double_quant: bool) -> dict:
    """One tile of the mma path (_nf4_mma_kernel) compiled for bf16 x at `tokens` tokens (1-16); per element as above,
    the elements of a loop iteration counted from its mmas, two per product (ptxas may unroll the loop over several
    steps)."""
    from llmopt.impls.nf4_matmul import _triton_nf4_matmul_kernels as kernels

    n_tiles = 1 if tokens <= 8 else 2
    constexprs = (kernels._mma_constexprs(tile, torch.bfloat16, n_tiles, double_quant)
                  | {"DOUBLE_QUANT": double_quant, "DQ_BLOCKSIZE": 256, "N_TILES": n_tiles})
    if tokens == 1:
        constexprs["M"] = 1
    pointers = {"x_ptr": "*bf16", "codes_ptr": "*u8", "absmax_ptr": "*u8" if double_quant else "*fp32",
                "scales_ptr": "*fp32", "offset_ptr": "*fp32", "dynamic_ptr": "*fp32", "table_ptr": "*fp32",
                "out_ptr": "*bf16"}
    divisible = (*pointers, "N", "K", "stride_xm", "stride_codes", "stride_om")
    warps = tile.row_groups * tile.k_slices
    figures = compile_sass(kernels._nf4_mma_kernel, pointer_types=pointers, constexprs=constexprs,
                           divisible_by_16=divisible, num_warps=warps)
    # two mmas of 16 rows x 16 of K (8 elements a lane) a tile of 8 tokens: the levels' high terms, then their low terms
    elements = figures["loop_ops"].get("HMMA", 0) / (2 * n_tiles) * 8
    return {"path": "mma", "tokens": tokens, "double_quant": double_quant, "tile": tile._asdict(),
            **_per_element(figures, elements)}


def sweep(first_only: bool = False) -> list[dict]:
    from llmopt.impls.nf4_matmul import _triton_nf4_matmul_kernels as kernels

    records = []
    for tile in kernels._MMA_TILES[:1] if first_only else kernels._MMA_TILES:
        for tokens, double_quant in ((1, False), (16, False), (16, True)):
            record = mma_tile_record(tile, tokens, double_quant)
            records.append(record)
            print(f"mma   {tile} tokens={tokens:2} dq={double_quant!s:5}: "
                  f"{record['loop_instructions_per_element']:5.2f} instr/element, {record['registers']} registers, "
                  f"{record['stack_bytes']} B stack", flush=True)
    for use_dot, tiles in ((False, kernels._FAMILIES["chunks"]), (True, kernels._DOT_TILES)):
        for tile in tiles[:1] if first_only else tiles:
            for double_quant in (False, True):
                record = tile_record(use_dot, tile, double_quant)
                records.append(record)
                print(f"{record['path']:5} {tile.block_n:3}x{tile.block_k:4} w{tile.num_warps} s{tile.num_stages}"
                      f"{' prefetch' if tile.prefetch else '':9}{' chunks' if tile.chunks else '':7} "
                      f"dq={double_quant!s:5}: {record['loop_instructions_per_element']:5.2f} instr/element, "
                      f"{record['registers']} registers, {record['stack_bytes']} B stack, "
                      f"{record['static_shared_bytes'] + record['dynamic_shared_bytes']} B shared", flush=True)
    return records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory for nf4_sass.json")
    parser.add_argument("--first", action="store_true", help="each path's first candidate tile only")
    args = parser.parse_args(argv)
    from llmopt.bench.machine import git_commit, versions

    write_document(args.out / RESULT_FILE, {"target": "sm_90 (compiled, not run)", "commit": git_commit(),
                                            "versions": versions(), "records": sweep(args.first)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
