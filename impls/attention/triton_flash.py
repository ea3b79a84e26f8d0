"""Registered impl: in-house Triton FlashAttention-2 kernels (forward and backward) with causal, sliding window,
GQA/MQA, head dims up to 256 and fp16/bf16/fp32; the kernels live in _triton_flash_kernels (imported on first
call, so registering needs no Triton)."""
from llmopt.impls import register


@register("attention", "triton_flash", kind="triton", devices=("cuda", "interpret"), requires=("triton",),
          supports={"backward": True, "dtypes": ("float16", "bfloat16", "float32")})
def triton_flash(q, k, v, *, causal=False, scale=None, window=(-1, -1)):
    from llmopt.impls.attention._triton_flash_kernels import flash_attention
    return flash_attention(q, k, v, causal=causal, scale=scale, window=window)
