"""Registered impl: in-house Triton NF4 quantization (with double quantization) and dequantization in bitsandbytes'
format; the kernels live in _triton_nf4_kernels (imported on first call, so registering needs no Triton)."""
from llmopt.impls import register


@register("nf4", "triton_nf4", kind="triton", devices=("cuda", "interpret"), requires=("triton",))
def triton_nf4(w, *, blocksize=64, double_quant=False):
    from llmopt.impls.nf4._triton_nf4_kernels import dequantize, quantize

    state = quantize(w, blocksize=blocksize, double_quant=double_quant)
    return state, dequantize(state)
