"""Helpers for the kernels' host code. Integers in plain Python: triton.cdiv and triton.next_power_of_2 are Triton
constexpr functions, about 5 µs a call from Python, which a launch path calling them a few times pays on every call.
Relaunching a compiled kernel without Triton's per-call binding, specialization and autotuner lookup (60-90 µs of host
time a call on the GPU host, cProfile, 2026-12-06), and the table of compiled kernels by launch key that does it.
Autotuning that times candidates as the benchmarks time calls."""
import os

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


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


class Launches:
    """Compiled kernels by launch key, relaunched directly once Triton has launched them (Triton's host path, 60-90 µs a
    call on the GPU host, is longer than a kernel of a few tokens). A key holds everything the compilation, tile and
    grid depend on: the kernel's kind, the caller's settings (constexprs, pinned tile or plan, device), every argument
    after the tensors (Triton specializes integers), each tensor's dtype and 16-byte alignment. Emptied when full (a
    server's many token counts), each key then launched by Triton once more. Under Triton's interpreter nothing is
    kept."""

    def __init__(self, kept: int = 1024):
        self.kept = kept
        self._launches: dict[tuple, tuple] = {}

    def key(self, kind: str, settings: tuple, tensors: tuple, args: tuple) -> tuple | None:
        """The launch key of a call whose runtime arguments `args` start with `tensors` (None under the
        interpreter)."""
        if _INTERPRET:
            return None
        return (kind, *settings, *args[len(tensors):], *((t.dtype, t.data_ptr() % 16 == 0) for t in tensors))

    def relaunched(self, key: tuple | None, device_index: int, args: tuple) -> bool:
        """Relaunch the compiled kernel kept under `key` with `args` (its runtime arguments); False when none is
        kept."""
        launch = self._launches.get(key) if key is not None else None
        if launch is None:
            return False
        kernel, grid, constexprs = launch
        relaunch(kernel, grid, device_index, (*args, *constexprs))
        return True

    def remember(self, key: tuple | None, kernel, grid: tuple[int, int, int], jit_function, args: tuple,
                 constexprs: dict) -> None:
        """Keep (kernel, its grid of three sizes, the constexprs after the runtime arguments in signature order) under
        `key` (None: nothing)."""
        if key is None:
            return
        if len(self._launches) >= self.kept:
            self._launches.clear()
        self._launches[key] = (kernel, grid, tuple(constexprs[name] for name in jit_function.arg_names[len(args):]))
