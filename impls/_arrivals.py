"""Arrival counters for one-launch reductions across programs (split-K, split-KV merges): each program adds its
partial result to global memory, then counts itself in; the last to arrive, seeing every other partial through the
counter's acquire-release order, does the reduction in a fixed order (deterministic) and re-arms the counter to zero."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_COUNTERS: dict[torch.device, torch.Tensor] = {}  # per device, all zero between launches


def arrival_counters(device: torch.device, count: int) -> torch.Tensor:
    """At least `count` int32 counters on `device`, all zero: kept per device, since every launch leaves them at zero
    (launches on two streams at once would share them)."""
    device = torch.device(device)
    counters = _COUNTERS.get(device)
    if counters is None or counters.numel() < count:
        counters = _COUNTERS[device] = torch.zeros(max(count, 1 << 12), dtype=torch.int32, device=device)
    return counters


@triton.jit
def last_to_arrive(counters_ptr, index, arrivals):
    """Count this program in at counters_ptr[index] once all its threads' stores are done; True for the program that
    completes `arrivals` (its later loads see the others' stores; load them with cache_modifier=".cg", since L1 is not
    coherent across SMs), which also re-arms the counter to zero."""
    tl.debug_barrier()  # every thread's partial is written before the arrival is released
    arrived = tl.atomic_add(counters_ptr + index, 1, sem="acq_rel", scope="gpu")
    last = arrived == arrivals - 1
    if last:
        tl.atomic_xchg(counters_ptr + index, 0)
    return last
