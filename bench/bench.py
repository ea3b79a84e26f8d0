"""Benchmarks the impls of a contract: for every case and impl, latency (median, p20, p80), TFLOP/s, GB/s, % of the
roofline measured at the start of the run, peak memory and the correctness margin of what was timed; one row each,
appended to results/<machine>/<technique>.jsonl. Variants: "fwd" times the impl's call (in its prepared native
layout when it has `prepare`), "bwd" times torch.autograd.grad through one forward."""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from functools import partial

import torch
from llmopt.bench.machine import describe, measure_peaks
from llmopt.bench.results import SKIPPED_FILE, append_rows, results_dir, utc_now
from llmopt.bench.timing import peak_memory_mb, time_fn, time_gpu_graph
from llmopt.impls import Unsupported
from llmopt.reference.contract import Call, Outcome, PropertyFailed

# The contract property whose margin (error / allowed) is recorded with each row, by mode.
MARGIN_PROPERTY = {"fwd": "matches_reference", "bwd": "grads_match_reference"}
# Forward FLOPs above which the float64 reference is not run for a margin (its scores must fit in memory).
MAX_MARGIN_FLOPS = {"cpu": 2e11, "cuda": 6e11}
OUT_OF_MEMORY = "does not fit in memory"


class Skipped(Exception):
    """A measurement that cannot be taken here; the message says why."""


class BenchRows(list):
    """The rows of one run (a list of row dicts) and, in `.skipped`, what was not measured and why (skip_note)."""

    def __init__(self):
        super().__init__()
        self.skipped: list[dict] = []


def skip_note(technique: str, impl: str | None, case_id: str | None, mode: str | None, reason: str,
              info: dict) -> dict:
    """What a run did not measure and why: {"technique", "impl", "case_id", "mode", "reason", "commit", "machine",
    "time"}, a None impl, case_id or mode meaning the note covers all of them."""
    return {"technique": technique, "impl": impl, "case_id": case_id, "mode": mode, "reason": reason,
            "commit": info["commit"], "machine": info["machine"],
            "time": utc_now()}


def record_skips(notes: list[dict], device: str, out=None) -> None:
    """Append skip notes to results_dir(device, out)/skipped.jsonl, beside the run's rows."""
    append_rows(results_dir(device, out) / SKIPPED_FILE, notes)


def describe_skip(note: dict) -> str:
    """impl, case and mode of a skip note (those it names), then its reason."""
    return " ".join(str(note[key]) for key in ("impl", "case_id", "mode", "reason") if note[key] is not None)


def bench_cases(contract, device: str, quick: bool = False) -> list:
    """The cases to consider: the contract's quick cases when `quick` or on the CPU, else its bench cases."""
    return contract.quick_cases if quick or device == "cpu" else contract.bench_cases


def case_skip_reason(contract, case, device: str) -> str | None:
    """Why `case` is not benchmarked on `device` (too many FLOPs for the CPU), or None."""
    if device != "cpu":
        return None
    flops = contract.cost(case, "fwd").flops
    if flops > contract.max_bench_cpu_flops:
        return f"too large for the CPU: {flops:.3g} FLOPs > {contract.max_bench_cpu_flops:.3g}"
    return None


def impl_skip_reason(impl, device: str) -> str | None:
    """Why `impl` is not benchmarked on `device` (unavailable, or interpreted Triton), or None."""
    if impl.runs_on(device) == "interpret":
        return "interpreted Triton is never benchmarked"
    return impl.unavailable_reason(device)


def call_skip_reason(contract, impl, case, mode: str) -> str | None:
    """Why `impl` cannot be benchmarked on `case` in `mode` (a feature it does not support, no backward), or None."""
    if mode == "bwd" and impl.supports.get("backward", True) is False:
        return "has no backward"
    return contract.unsupported(case, impl.supports)


def _is_float_tensor(value) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def validated_call(contract, case, device: str) -> Call:
    """The inputs of `case` on `device`, checked by the contract's validation."""
    call = contract.make_call(case, device)
    contract.validate(call)
    return call


def timed_call(impl, call: Call, mode: str, frozen: tuple[int, ...] = ()) -> Callable[[], object]:
    """The zero-argument callable that is timed. Everything before it, outside the timing: for "fwd", impl.prepare's
    layout conversion when the impl has one; for "bwd", the floating tensors of `call.args` made leaves that require
    grad (except the positions in `frozen`, the contract's frozen_args), one forward, and a random output gradient; the
    callable then runs torch.autograd.grad with respect to those inputs, the graph retained (it includes the backward
    of any layout conversion prepare made)."""
    if mode == "fwd":
        if impl.prepare is not None:
            run, _ = impl.prepare(*call.args, **call.kwargs)
            return run
        return lambda: impl.fn(*call.args, **call.kwargs)
    args = tuple(a.detach().requires_grad_() if _is_float_tensor(a) and i not in frozen else a
                 for i, a in enumerate(call.args))
    inputs = [a for i, a in enumerate(args) if _is_float_tensor(a) and i not in frozen]
    out = timed_call(impl, Call(args, call.kwargs), "fwd")()
    if out.grad_fn is None:
        raise Skipped("its output carries no autograd graph (forward only)")
    dout = torch.randn_like(out)
    return lambda: torch.autograd.grad(out, inputs, dout, retain_graph=True)


def margin(contract, impl, case, mode: str, device: str) -> float | str | None:
    """Margin (error / allowed, <= 1 passes) of the contract's MARGIN_PROPERTY[mode] for `impl` on `case` (on the
    inputs make_call rebuilds, equal to the timed ones); "FAIL: <message>" when it fails; None when the contract has
    no such property, it does not apply, the case is over MAX_MARGIN_FLOPS or the reference does not fit in memory."""
    prop = next((p for p in contract.properties if p.name == MARGIN_PROPERTY[mode]), None)
    if prop is None or not prop.applies(impl, case) or contract.cost(case, "fwd").flops > MAX_MARGIN_FLOPS[device]:
        return None
    try:
        checked = prop.check(impl, case, device)
        return checked.margin if isinstance(checked, Outcome) else checked
    except PropertyFailed as failure:
        return f"FAIL: {failure}"
    except torch.OutOfMemoryError:
        return None


def _timed(impl, call: Call, mode: str, device: str, frozen: tuple[int, ...] = ()):
    """(Timing, peak MB, {"latency_ms_graph", "graph_note"}) of the timed call: on CUDA also replayed from a CUDA graph
    (median ms, or None with the reason: capture failed, CPU, or a backward); its inputs and graph are freed on
    return."""
    run = timed_call(impl, call, mode, frozen)
    timing, memory = time_fn(run, device), peak_memory_mb(run, device)
    replayed_ms, note = graph_replay(run, call, mode, device)
    return timing, memory, {"latency_ms_graph": replayed_ms, "graph_note": note}


def graph_replay(run: Callable[[], object], call: Call, mode: str, device: str) -> tuple[float | None, str | None]:
    """(median ms of `run`, the timed call of `call`, replayed from a CUDA graph, None), or (None, why not: CPU, a
    backward, or the capture failed)."""
    if device != "cuda":
        return None, "CPU"
    if mode == "bwd":  # autograd runs backward kernels on the forward's stream, not the capture's
        return None, "backward: not captured"
    generators = tuple(a for a in call.args if isinstance(a, torch.Generator) and a.device.type == "cuda")
    replayed, note = time_gpu_graph(run, generators=generators)
    return (None, note) if replayed is None else (replayed.median_ms, None)


def rates(cost, latency_ms: float, peaks: dict) -> dict:
    """The row's figures derived from a latency: TFLOP/s, GB/s and % of the roofline the peaks give (the time
    max(flops / peak FLOP/s, bytes / peak bandwidth) over the latency)."""
    roofline_ms = max(cost.flops / peaks["matmul_tflops"] / 1e9, cost.bytes / peaks["copy_gbps"] / 1e6)
    return {"tflops": cost.flops / latency_ms / 1e9, "gbps": cost.bytes / latency_ms / 1e6,
            "roofline_pct": 100 * roofline_ms / latency_ms}


def measure(contract, impl, case, call: Call, mode: str, device: str, info: dict, peaks: dict) -> dict:
    """One result row (ARCHITECTURE.md's schema) for `impl` on `case` in `mode`; `call` holds the validated inputs,
    `info` is machine.describe(device), `peaks` machine.measure_peaks(device)."""
    timing, memory, graph = _timed(impl, call, mode, device, contract.frozen_args)
    ms = timing.median_ms
    return {
        "technique": contract.name, "impl": impl.name, "case": dataclasses.asdict(case),
        "case_id": contract.case_id(case), "mode": mode, "device": device, "gpu": info["gpu"],
        "dtype": getattr(case, "dtype", None), "latency_ms": ms, "latency_ms_p20": timing.p20_ms,
        "latency_ms_p80": timing.p80_ms, **graph, **rates(contract.cost(case, mode), ms, peaks), "peak_mem_mb": memory,
        "margin": margin(contract, impl, case, mode, device), "commit": info["commit"], "machine": info["machine"],
        "versions": info["versions"],
        "peaks": {"copy_gbps": peaks["copy_gbps"], "matmul_tflops": peaks["matmul_tflops"]},
        "time": utc_now(),
    }


def attempt(work: Callable, device: str):
    """(work(), None), or (None, why) when it raised Skipped, NotImplementedError (a library refusing these inputs,
    e.g. a backward it lacks on this device) or ran out of memory; memory is released after."""
    try:
        return work(), None
    except Skipped as skipped:
        reason = str(skipped)
    except NotImplementedError as refusal:
        reason = f"not implemented: {refusal}"
    except Unsupported as refusal:
        reason = f"unsupported: {refusal}"
    except torch.OutOfMemoryError:
        reason = OUT_OF_MEMORY
    if device == "cuda":  # the failed attempt's tensors died with its traceback: hand their blocks back
        torch.cuda.empty_cache()
    return None, reason


def run_bench(contract, impls, device: str, *, quick: bool = False, out=None, modes=None, cases: str | None = None,
              progress: Callable[[str], None] | None = None) -> BenchRows:
    """Benchmark `impls` on the contract's cases (bench_cases) on `device` ("cpu" or "cuda") in each of `modes`
    (default: the contract's bench_modes), only the cases whose case_id matches the regular expression `cases` if given,
    after measuring the machine's peaks once. Rows are appended to results_dir(device, out)/<technique>.jsonl and
    returned; what was skipped, and why, is in the result's `.skipped` and appended to skipped.jsonl beside the rows.
    `progress(line)` hears of each."""
    say = progress or (lambda line: None)
    modes = contract.bench_modes if modes is None else modes
    info, peaks = describe(device), measure_peaks(device)
    say(f"peaks on {info['machine']}: copy {peaks['copy_gbps']:.1f} GB/s, "
        f"{peaks['matmul_dtype']} matmul {peaks['matmul_tflops']:.2f} TFLOP/s")
    path = results_dir(device, out) / f"{contract.name}.jsonl"
    result = BenchRows()

    def skip(impl, case, mode, reason):
        note = skip_note(contract.name, None if impl is None else impl.name,
                         None if case is None else contract.case_id(case), mode, reason, info)
        result.skipped.append(note)
        record_skips([note], device, out)
        say("skip " + describe_skip(note))

    usable = []
    for impl in impls:
        reason = impl_skip_reason(impl, device)
        if reason:
            skip(impl, None, None, reason)
        else:
            usable.append(impl.for_mode(impl.runs_on(device)))
    for case in bench_cases(contract, device, quick):
        if cases is not None and not re.search(cases, contract.case_id(case)):
            continue
        reason = case_skip_reason(contract, case, device)
        if reason is None:
            call, reason = attempt(partial(validated_call, contract, case, device), device)
        if reason:
            skip(None, case, None, reason)
            continue
        for impl in usable:
            for mode in modes:
                reason = call_skip_reason(contract, impl, case, mode)
                if reason is None:
                    row, reason = attempt(partial(measure, contract, impl, case, call, mode, device, info, peaks),
                                           device)
                if reason:
                    skip(impl, case, mode, reason)
                    continue
                append_rows(path, [row])
                result.append(row)
                say(f"{impl.name} {row['case_id']} {mode}: {row['latency_ms']:.3f} ms, {row['tflops']:.2f} TFLOP/s, "
                    f"{row['roofline_pct']:.0f}% of roofline")
        del call  # free this case's inputs before the next case allocates its own
    return result
