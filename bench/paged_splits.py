"""Split-KV sweep of the in-house paged decode kernel (FlashDecoding's split count, Dao et al. 2023) on the benchmark
cases where it missed its goals: every split count pinned in turn (tiles autotuned as usual) and both ways of merging
the chunks (a second kernel, or the last chunk's program), each call timed eagerly and replayed from a CUDA graph, next
to vLLM FA3 where it runs; separates the kernel's own time from the host's launch cost and shows which split count and
merge each case wants. GPU only: `python -m llmopt.bench.paged_splits OUT_DIR` writes OUT_DIR/paged_splits.json."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch
from llmopt.bench.results import write_document
from llmopt.bench.timing import eager_and_graph_us
from llmopt.reference.paged_attention import PagedCase, make_call

RESULT_FILE = "paged_splits.json"
# The benchmark grid's cases where the in-house kernel missed its goals: the short calls (2026-11-25, H100) and the
# split-KV ones 3-7% behind vLLM FA3 on graph replays (2026-12-04, H200).
CASES = [PagedCase(B, 32, Hkv, 128, 16, (context,), dtype="bfloat16")
         for Hkv, B, context in ((8, 1, 1024), (8, 1, 4096), (8, 1, 16384), (8, 1, 65536), (8, 16, 1024),
                                 (8, 16, 4096), (8, 16, 16384), (8, 64, 1024), (32, 1, 1024), (32, 1, 16384),
                                 (32, 1, 65536), (32, 64, 1024))]
SPLITS = (1, 2, 4, 8, 16, 32, 64)


def sweep(cases=CASES, splits=SPLITS) -> list[dict]:
    """One record per case: the automatic plan's split count and timings; for each pinned split count the timings of
    each merge (kernels.MERGES; one entry when unsplit); vLLM FA3's."""
    from llmopt import impls as registry
    from llmopt.impls.paged_attention import _triton_paged_kernels as kernels

    fa3 = registry.discover("paged_attention").get("vllm_fa3")
    fa3_reason = fa3.unavailable_reason("cuda") if fa3 else "not registered"
    records = []
    for case in cases:
        call = make_call(case, "cuda")
        q, k_cache, v_cache, block_table, seq_lens = call.args
        automatic = kernels.split_plan(case.B * case.Hkv, max(case.seq_lens), q.device)[0]
        fa3_timings = None if fa3_reason else eager_and_graph_us(fa3.prepare(*call.args, **call.kwargs)[0])
        record = {"case": repr(case), "B": case.B, "Hkv": case.Hkv, "context": max(case.seq_lens),
                  "automatic_splits": automatic,
                  "automatic": eager_and_graph_us(kernels.plan(*call.args, **call.kwargs)),
                  "pinned": {}, "vllm_fa3": fa3_timings, "vllm_fa3_unavailable": fa3_reason}
        for count in splits:
            for merge in kernels.MERGES:
                kernels.pin(num_splits=count, merge=merge)
                try:  # chunks are whole split quanta: a pinned count above context / quantum runs as fewer
                    effective = kernels.split_plan(case.B * case.Hkv, max(case.seq_lens), q.device)[0]
                    timings = record["pinned"].setdefault(effective, {})
                    if (effective > 1 or not timings) and merge not in timings:
                        timings[merge] = eager_and_graph_us(kernels.plan(*call.args, **call.kwargs))
                finally:
                    kernels.pin()
        records.append(record)
        best = min(((f"{count} {merge}", timing) for count, merges in record["pinned"].items()
                    for merge, timing in merges.items()), key=lambda item: item[1]["graph_us"] or float("inf"))
        fa3_graph = (record["vllm_fa3"] or {}).get("graph_us")
        print(f"{record['case']}: automatic {automatic} splits eager {record['automatic']['eager_us']:.1f} µs graph "
              f"{record['automatic']['graph_us'] or float('nan'):.1f} µs; best pinned {best[0]} graph "
              f"{best[1]['graph_us'] or float('nan'):.1f} µs; vLLM FA3 graph {fa3_graph or float('nan'):.1f} µs",
              flush=True)
        del call, q, k_cache, v_cache, block_table, seq_lens
        torch.cuda.empty_cache()
    return records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory for paged_splits.json")
    parser.add_argument("--cases", default="", help="only the cases whose repr matches this regex")
    parser.add_argument("--splits", default=",".join(map(str, SPLITS)), help="split counts, comma-separated")
    args = parser.parse_args(argv)
    cases = [case for case in CASES if re.search(args.cases, repr(case))]
    splits = tuple(int(count) for count in args.splits.split(","))
    if not torch.cuda.is_available():
        print("paged_splits needs a CUDA device", file=sys.stderr)
        return 2
    from llmopt.bench.machine import describe

    write_document(args.out / RESULT_FILE, {"machine": describe("cuda"), "records": sweep(cases, splits)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
