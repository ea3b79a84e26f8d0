"""Integer helpers for the kernels' host code, in plain Python: triton.cdiv and triton.next_power_of_2 are Triton
constexpr functions, about 5 µs a call from Python, which a launch path calling them a few times pays on every call."""


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for integers, b > 0."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n for n >= 1 (0 for 0, as Triton's)."""
    return 1 << (n - 1).bit_length() if n > 0 else 0
