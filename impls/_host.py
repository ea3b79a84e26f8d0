"""Helpers for the kernels' host code. Integers in plain Python: triton.cdiv and triton.next_power_of_2 are Triton
constexpr functions, about 5 µs a call from Python, which a launch path calling them a few times pays on every call.
Relaunching a compiled kernel without Triton's per-call binding, specialization and autotuner lookup (60-90 µs of host
time a call on the GPU host, cProfile, 2026-12-06). Autotuning that times candidates as the benchmarks time calls."""


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for integers, b > 0."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n for n >= 1 (0 for 0, as Triton's)."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def autotune(configs: list, key: list[str], **options):
    """triton.autotune(configs, key, **options) with its candidates timed by llmopt.bench.timing.autotune_timer (the L2
    flushed by reading, as the benchmarks time every call), so an autotuner chooses by the figures they report: every
    in-house kernel autotunes through here."""
    import triton
    from llmopt.bench.timing import autotune_timer

    return triton.autotune(configs=configs, key=key, do_bench=autotune_timer, **options)


def relaunch(kernel, grid: tuple[int, int, int], device_index: int, args: tuple) -> None:
    """Launch `kernel`, a compiled Triton kernel (what launching a JITFunction or an autotuner returned), on the current
    stream with `args`: every parameter of its signature in order, constexprs included. The caller keys what it
    relaunches on everything Triton specialized the kernel on (integer values, 16-byte alignment of each tensor,
    dtypes, constexprs, device): a launch bypasses that check."""
    import triton

    if len(grid) != 3:
        raise ValueError(f"relaunch needs the grid's three sizes, got {grid}")
    hooks = triton.knobs.runtime
    stream = triton.runtime.driver.active.get_current_stream(device_index)
    metadata = (None if hooks.launch_enter_hook is None and hooks.launch_exit_hook is None
                else kernel.launch_metadata(grid, stream, *args))
    kernel.run(*grid, stream, kernel.function, kernel.packed_metadata, metadata, hooks.launch_enter_hook,
               hooks.launch_exit_hook, *args)
