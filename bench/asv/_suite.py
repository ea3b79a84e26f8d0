"""A factory of asv benchmark classes, one per technique: `track_ms` (median latency of calls launched from Python)
and, on CUDA, `track_graph_ms` (median latency of the call replayed from a CUDA graph: the kernels without the host's
launch cost, skipped for a backward or a call that cannot be captured) and `track_peak_mem_mb` (peak memory of one
call) over impl x case x mode (the contract's bench_modes: "fwd", and "bwd" where there is a backward), measured
exactly as `llmopt bench` measures (same cases, skips and timed callable). A technique's suite is one line in
bench/asv/<technique>.py: `Attention = technique_suite("attention", on_cuda=...)`.

Nothing named time_*/track_*/mem_*/peakmem_* may be imported here at module level: asv would take it for a benchmark.
"""
from __future__ import annotations

import os
from collections.abc import Callable

import torch
from llmopt import impls as registry
from llmopt.bench import bench, timing
from llmopt.reference import get_contract

IMPLS_ENV = "LLMOPT_ASV_IMPLS"  # comma-separated impl names to track (default: every impl that runs here)


def _device() -> str:
    """"cuda" when a GPU is visible, asked through NVML (torch.cuda.device_count) so the asv forkserver, which
    imports the suites before it forks each benchmark, never initializes CUDA."""
    return "cuda" if torch.cuda.device_count() > 0 else "cpu"


def technique_suite(technique: str, on_cuda: Callable[[object], bool] = lambda case: True) -> type:
    """An asv benchmark class for `technique`. Params: impls that run natively on this machine's device (never
    interpreted Triton), cases and mode. Cases: on CUDA the contract's bench cases that `on_cuda` keeps (asv runs every
    combination in its own process, so a few shapes), on CPU the quick cases `llmopt bench` measures there. A
    combination bench would skip (unavailable library, unsupported feature, no backward, out of memory) raises
    NotImplementedError in setup, which asv records as skipped."""
    contract = get_contract(technique)
    device = _device()
    impls = registry.discover(technique)
    chosen = os.environ.get(IMPLS_ENV, "").split(",") if os.environ.get(IMPLS_ENV) else None
    names = [name for name, impl in sorted(impls.items())
             if impl.runs_on(device) == device and (chosen is None or name in chosen)]
    cases = {contract.case_id(case): case for case in bench.bench_cases(contract, device)
             if bench.case_skip_reason(contract, case, device) is None and (device == "cpu" or on_cuda(case))}

    class Suite:
        params = (names, list(cases), list(contract.bench_modes))
        param_names = ("impl", "case", "mode")
        rounds = 1  # each track call already repeats and takes the median
        timeout = 600  # setup may compile (torch.compile, Triton autotuning)

        def setup(self, impl_name: str, case_id: str, mode: str):
            impl, case = impls[impl_name], cases[case_id]
            reason = bench.impl_skip_reason(impl, device) or bench.call_skip_reason(contract, impl, case, mode)
            if reason is None:
                self.call, reason = bench.attempt(lambda: bench.validated_call(contract, case, device), device)
            if reason is None:
                self.run, reason = bench.attempt(
                    lambda: bench.timed_call(impl, self.call, mode, contract.frozen_args), device)
            if reason:
                raise NotImplementedError(reason)

        def track_ms(self, impl_name: str, case_id: str, mode: str) -> float:
            return timing.time_fn(self.run, device).median_ms

        track_ms.unit = "ms"

    if device == "cuda":
        def track_graph_ms(self, impl_name: str, case_id: str, mode: str) -> float:
            replayed_ms, why = bench.graph_replay(self.run, self.call, mode, device)
            if replayed_ms is None:
                from asv_runner.benchmarks.mark import SkipNotImplemented  # asv's own: skipped, not failed
                raise SkipNotImplemented(why)
            return replayed_ms

        def track_peak_mem_mb(self, impl_name: str, case_id: str, mode: str) -> float:
            return timing.peak_memory_mb(self.run, device)

        track_graph_ms.unit = "ms"
        track_peak_mem_mb.unit = "MB"
        Suite.track_graph_ms, Suite.track_peak_mem_mb = track_graph_ms, track_peak_mem_mb
    Suite.__name__ = Suite.__qualname__ = "".join(word.title() for word in technique.split("_"))
    return Suite
