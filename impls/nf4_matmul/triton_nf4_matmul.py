"""Registered impl: in-house fused Triton NF4 GEMV (one token) / GEMM (2+ tokens) reading the packed codes and absmax
(plain or double-quantized) directly; the kernels live in _triton_nf4_matmul_kernels (imported on first call)."""
from llmopt.impls import register


@register("nf4_matmul", "triton_nf4_matmul", kind="triton", devices=("cuda", "interpret"), requires=("triton",),
          supports={"k_not_multiple_of_blocksize": False, "dtypes": ("float16", "bfloat16", "float32")})
def triton_nf4_matmul(x, state):
    from llmopt.impls.nf4_matmul._triton_nf4_matmul_kernels import nf4_matmul
    return nf4_matmul(x, state)
