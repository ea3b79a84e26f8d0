"""Tile sweep of the in-house NF4 matmul (QLoRA's NF4 format, Dettmers et al. 2023) on the benchmark shapes: the
autotuner's own timing of every candidate tile it kept (whole-K and split-K, kernel only), the chosen tile timed as
launched and replayed from a CUDA graph, next to bitsandbytes matmul_4bit and the dense bf16 matmul; tells launch cost
from kernel time and which tiles each shape wants. GPU only: `python -m llmopt.bench.nf4_tiles OUT_DIR` writes
OUT_DIR/nf4_tiles.json."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from llmopt.bench.results import write_document
from llmopt.bench.timing import eager_and_graph_us

RESULT_FILE = "nf4_tiles.json"
IMPLS = ("triton_nf4_matmul", "bnb_matmul_4bit", "bf16_dense")


def _tile_name(config) -> str:
    k = config.kwargs
    if "ROW_GROUPS" in k:  # the mma path
        return f"mma groups{k['ROW_GROUPS']} slices{k['K_SLICES']} step{k['BLOCKS_PER_STEP']} w{config.num_warps}"
    split = f"split{k['SPLIT_K']}" + (f" tail of {k['TAIL_ROUND']}/SM" if k["TAIL_ROUND"] else "") + (
        f" stream-K {k['STREAM_K']}/SM" if k["STREAM_K"] else "")
    return (f"n{k['BLOCK_N']} k{k['BLOCK_K']} {split} w{config.num_warps} "
            f"s{config.num_stages}{' prefetch' if k['PREFETCH'] else ''}{' chunks' if k['CHUNKS'] else ''}")


def sweep(cases) -> list[dict]:
    """One record per case: each impl's eager and graph timings; for the in-house kernel the tile it ran and, when the
    autotuner ran, its timing of every kept candidate (microseconds)."""
    from llmopt import impls as registry
    from llmopt.bench import bench
    from llmopt.impls.nf4_matmul import _triton_nf4_matmul_kernels as kernels
    from llmopt.reference import get_contract

    contract = get_contract("nf4_matmul")
    impls = registry.discover("nf4_matmul")
    records = []
    for case in cases:
        call = bench.validated_call(contract, case, "cuda")
        record = {"case": repr(case), "N": case.N, "K": case.K, "M": case.M, "double_quant": case.double_quant}
        for name in IMPLS:
            impl = impls[name]
            reason = bench.impl_skip_reason(impl, "cuda") or bench.call_skip_reason(contract, impl, case, "fwd")
            if reason:
                record[name] = {"skipped": reason}
                continue
            run = bench.timed_call(impl, call, "fwd")
            run()
            record[name] = eager_and_graph_us(run)
            if name == "triton_nf4_matmul":
                tuner = kernels.autotuner(case.M, case.N, case.K, getattr(torch, case.dtype),
                                          case.double_quant)
                chosen = getattr(tuner, "best_config", None)
                record[name]["tile"] = _tile_name(chosen) if chosen else "fixed (not autotuned)"
                timings = getattr(tuner, "configs_timings", None) or {}
                record[name]["candidates_us"] = {_tile_name(c): t[0] * 1e3 for c, t in timings.items()}
                tuner.configs_timings = {}
        records.append(record)
        ours, bnb = record["triton_nf4_matmul"], record["bnb_matmul_4bit"]
        print(f"{case.N}x{case.K} M={case.M} dq={case.double_quant}: ours {ours.get('tile')} eager "
              f"{ours.get('eager_us', float('nan')):.1f} graph {ours.get('graph_us') or float('nan'):.1f} us; "
              "bnb eager "
              f"{bnb.get('eager_us', float('nan')):.1f} graph {bnb.get('graph_us') or float('nan'):.1f} us", flush=True)
        del call
        torch.cuda.empty_cache()
    return records


def main(argv=None) -> int:
    from llmopt.reference.nf4 import NF4_MATMUL_BENCH_CASES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory for nf4_tiles.json")
    parser.add_argument("--double-quant", action="store_true", help="the double-quantized cases too")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("nf4_tiles needs a CUDA device", file=sys.stderr)
        return 2
    from llmopt.bench.machine import describe

    cases = [c for c in NF4_MATMUL_BENCH_CASES if args.double_quant or not c.double_quant]
    write_document(args.out / RESULT_FILE, {"machine": describe("cuda"), "records": sweep(cases)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
