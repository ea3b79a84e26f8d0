"""Layout conversions for library adapters: the contract's (B, H, N, D) to the (B, N, H, D) and packed
(B*N, H, D) layouts FlashAttention libraries take, done once outside the timed region, and the window convention."""
from __future__ import annotations


def to_bnhd(*tensors):
    """(B, H, L, D) views -> contiguous (B, L, H, D) copies (autograd flows through the copy)."""
    return tuple(t.transpose(1, 2).contiguous() for t in tensors)


def from_bnhd(out):
    """(B, N, H, D) -> (B, H, N, D) view."""
    return out.transpose(1, 2)


def flash_window(window, unbounded):
    """The contract's (left, right) with -1 unbounded -> a library's pair with `unbounded` for that side."""
    return tuple(unbounded if w < 0 else w for w in window)


def check_half_and_head_dim(case, *, max_head_dim=256, multiple=8):
    """Reason a FlashAttention-family kernel cannot take the case, or None."""
    if case.D % multiple or case.D > max_head_dim:
        return f"head dim must be a multiple of {multiple} up to {max_head_dim}"
    return None
