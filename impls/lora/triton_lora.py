"""Registered impl: in-house fused Triton LoRA linear, forward and backward (dx, dA, dB), never forming B·A; the
kernels live in _triton_lora_kernels (imported on first call, so registering needs no Triton)."""
from llmopt.impls import register


@register("lora", "triton_lora", kind="triton", devices=("cuda", "interpret"), requires=("triton",),
          supports={"backward": True, "dtypes": ("float16", "bfloat16", "float32")})
def triton_lora(x, W, A, B, *, scaling):
    from llmopt.impls.lora._triton_lora_kernels import lora_linear
    return lora_linear(x, W, A, B, scaling=scaling)
