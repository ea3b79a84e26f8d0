"""Timing of one zero-argument callable, in milliseconds: CUDA events with an L2 flush before every repetition on the
GPU (triton.testing.do_bench's method, written here so it runs without triton, flushing by reading rather than
writing: l2_flush), time.perf_counter on the CPU;
each returns the median and the 20th/80th percentiles. On the GPU also the same call replayed from a CUDA graph (the
kernels without the host's launch cost, as a serving engine that captures its decode step sees them), and the peak
memory one call allocates."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

import torch

L2_FLUSH_BYTES = 256 * 10**6  # read before each GPU repetition: larger than any L2 (H100: 50 MB)
ESTIMATE_CALLS = 5  # GPU calls timed together to size the warm-up and the repetitions
MIN_REPS = 5  # fewest repetitions, so the percentiles mean something


class Timing(NamedTuple):
    """Milliseconds per call: median and the 20th / 80th percentiles of the repetitions."""

    median_ms: float
    p20_ms: float
    p80_ms: float


def _summary(times_ms: list[float]) -> Timing:
    median, p20, p80 = torch.tensor(times_ms, dtype=torch.float64).quantile(
        torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64)).tolist()
    return Timing(median, p20, p80)


def _counts(estimate_ms: float, warmup_ms: float, rep_ms: float, reps: int | None) -> tuple[int, int]:
    """(warm-up calls, timed repetitions) that fill the budgets given one call's estimated time."""
    estimate_ms = max(estimate_ms, 1e-6)
    return int(warmup_ms / estimate_ms), reps if reps is not None else max(MIN_REPS, int(rep_ms / estimate_ms))


def l2_flush() -> Callable[[], None]:
    """A call that evicts every line of L2 by reading L2_FLUSH_BYTES (summed into one int64), leaving L2 full of clean
    lines. A flush by writing (do_bench's zero_) leaves up to a whole L2 of dirty lines, which the timed call's reads
    evict and write back to DRAM inside its time: on the H100, 11.7 of the 69.3 µs our one-token NF4 matmul of 132 MB
    took, 1.5 of bitsandbytes' 106.6 (its slower reads hide the write-backs), 1.0 of 11.4 at 4096²
    (results/h100/probes/2026-12-06-nf4-flush-probe.json). Run back to back over copies of their inputs, as a decode
    step over layers runs them, the same kernels timed at or under the read flush's figures."""
    buffer = torch.zeros(L2_FLUSH_BYTES // 8, dtype=torch.int64, device="cuda")
    total = torch.empty((), dtype=torch.int64, device="cuda")
    return lambda: torch.sum(buffer, dim=0, out=total)


def time_gpu(fn: Callable, *, warmup_ms: float = 25.0, rep_ms: float = 100.0, reps: int | None = None) -> Timing:
    """Time `fn` on the current CUDA device: one untimed call, an estimate over ESTIMATE_CALLS calls, warm-up calls
    filling `warmup_ms`, then `reps` repetitions (or as many as fill `rep_ms`), each after an l2_flush so no
    repetition finds its inputs in L2; a CUDA event pair around each call."""
    flush = l2_flush()
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(ESTIMATE_CALLS):
        flush()
        fn()
    end.record()
    torch.cuda.synchronize()
    warmup, n = _counts(start.elapsed_time(end) / ESTIMATE_CALLS, warmup_ms, rep_ms, reps)
    for _ in range(warmup):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for start, end in zip(starts, ends, strict=True):
        flush()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return _summary([start.elapsed_time(end) for start, end in zip(starts, ends, strict=True)])


def autotune_timer(kernel_call: Callable, quantiles: tuple[float, ...]) -> list[float]:
    """Triton's autotuner's do_bench (every in-house kernel's, through llmopt.impls._host.autotune): time_gpu of one
    candidate, as the quantiles asked for (0.5, 0.2, 0.8 of the milliseconds), so that the autotuner chooses by the
    flush that the benchmarks report (l2_flush) rather than do_bench's own."""
    timing = time_gpu(kernel_call)
    by_quantile = {0.5: timing.median_ms, 0.2: timing.p20_ms, 0.8: timing.p80_ms}
    if unknown := [q for q in quantiles if q not in by_quantile]:
        raise ValueError(f"autotune_timer gives the quantiles {sorted(by_quantile)}, not {unknown}")
    return [by_quantile[q] for q in quantiles]


def time_gpu_graph(fn: Callable, *, warmup_ms: float = 25.0, rep_ms: float = 100.0, reps: int | None = None,
                   generators: tuple = ()) -> tuple[Timing | None, str | None]:
    """(time_gpu of replaying `fn` captured in a CUDA graph, None), or (None, why) when `fn` cannot be captured (it
    synchronizes, reads a device value on the host, ...). `fn` runs a few times on a side stream first, so that lazy
    work (compilation, autotuning, allocator growth) happens before the capture, as torch.cuda.graph's docs ask.
    `generators`: CUDA generators `fn` draws from besides the default one, registered with the graph so that each
    replay advances them (where this torch can; otherwise the capture fails and says so)."""
    graph = torch.cuda.CUDAGraph()
    try:
        for generator in generators:
            graph.register_generator_state(generator)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            fn()
        return time_gpu(graph.replay, warmup_ms=warmup_ms, rep_ms=rep_ms, reps=reps), None
    except Exception as error:  # noqa: BLE001 - any capture failure is reported with the row, never fatal
        torch.cuda.synchronize()
        return None, f"{type(error).__name__}: {error}"[:300]
    finally:
        del graph
        torch.cuda.empty_cache()


def eager_and_graph_us(fn: Callable) -> dict:
    """{"eager_us", "graph_us", "graph_note"}: `fn` timed by time_gpu as it is launched and replayed from a CUDA graph
    (None and the reason where it cannot be captured), medians in microseconds."""
    eager = time_gpu(fn)
    graph, why = time_gpu_graph(fn)
    return {"eager_us": eager.median_ms * 1e3, "graph_us": graph.median_ms * 1e3 if graph else None, "graph_note": why}


def time_cpu(fn: Callable, *, warmup_ms: float = 25.0, rep_ms: float = 100.0, reps: int | None = None) -> Timing:
    """Time `fn` with time.perf_counter: one untimed call, one timed call as the estimate, warm-up calls filling
    `warmup_ms`, then `reps` repetitions (or as many as fill `rep_ms`), each timed alone."""
    fn()
    started = time.perf_counter()
    fn()
    warmup, n = _counts((time.perf_counter() - started) * 1e3, warmup_ms, rep_ms, reps)
    for _ in range(warmup):
        fn()
    times_ms = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        times_ms.append((time.perf_counter() - started) * 1e3)
    return _summary(times_ms)


def time_fn(fn: Callable, device: str, *, warmup_ms: float = 25.0, rep_ms: float = 100.0,
            reps: int | None = None) -> Timing:
    """time_gpu on "cuda", time_cpu on "cpu"."""
    timer = time_gpu if device == "cuda" else time_cpu
    return timer(fn, warmup_ms=warmup_ms, rep_ms=rep_ms, reps=reps)


def peak_memory_mb(fn: Callable, device: str) -> float | None:
    """MB (1e6 B) of CUDA memory one call of `fn` allocates at its peak beyond what was allocated before it, its
    output included; None on the CPU, where there is no allocator counter to read. A first call runs unmeasured:
    it may autotune (Triton's benchmarking allocates a 256 MB cache-flush buffer) or build lazily cached state."""
    if device != "cuda":
        return None
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 1e6
