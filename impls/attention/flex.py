"""FlexAttention (torch.nn.attention.flex_attention), compiled with torch.compile on CPU and CUDA: bottom-right
causal and windows as a mask_mod over a block mask, GQA through enable_gqa. One compiled kernel per shape (slow to
verify on CPU: every new shape compiles)."""
from __future__ import annotations

from llmopt.impls import Unsupported, register

_COMPILED = {}


def _mask_mod(N, M, causal, window):
    offset, (left, right) = M - N, window

    def mask_mod(b, h, i, j):
        keep = j >= 0
        if causal:
            keep = keep & (j <= i + offset)
        if left >= 0:
            keep = keep & (j >= i + offset - left)
        if right >= 0:
            keep = keep & (j <= i + offset + right)
        return keep

    return mask_mod


def prepare(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if q.device.type not in _COMPILED:
        # One kernel per shape: never let dynamo give up after its default 8 and silently run the unfused eager form.
        torch._dynamo.config.recompile_limit = 1 << 16
        torch._dynamo.config.accumulated_recompile_limit = 1 << 16
        torch._dynamo.config.fail_on_recompile_limit_hit = True
        _COMPILED[q.device.type] = torch.compile(flex_attention, dynamic=False)
    N, M = q.shape[2], k.shape[2]
    block_mask = create_block_mask(_mask_mod(N, M, causal, tuple(window)), None, None, N, M, device=q.device)
    gqa = q.shape[1] != k.shape[1]
    compiled = _COMPILED[q.device.type]

    def run():
        try:
            return compiled(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)
        except Exception as error:  # inductor declining to lower a shape is the library's "unsupported"
            if "NoValidChoicesError" in str(error):
                raise Unsupported(f"inductor has no FlexAttention kernel for this shape: {str(error)[:200]}") from error
            raise

    return run, (lambda out: out)


# On CPU the compiled FlexAttention has no backward (NotImplementedError).
# Every new shape compiles a kernel (seconds on CPU): a smaller hypothesis budget there, beyond the fixed grid.
@register("attention", "flex", kind="torch", devices=("cpu", "cuda"), prepare=prepare, supports={"backward": ("cuda",)},
          examples_budget={"cpu": 3, "cuda": 5})
def flex(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    run, _ = prepare(q, k, v, causal=causal, scale=scale, window=window)
    return run()
