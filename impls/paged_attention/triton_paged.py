"""Registered impl: the in-house Triton paged decode kernel (GQA-aware, split-KV with a merge kernel), kernels in
_triton_paged_kernels (imported on first call, so registering needs no Triton); `prepare` plans the split and its
buffers outside the timed region."""
from llmopt.impls import register


def _unsupported(case):
    if case.block_size & (case.block_size - 1):
        return "block size not a power of two"
    return None if case.D <= 256 else "head dim above 256"


def prepare(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    from llmopt.impls.paged_attention._triton_paged_kernels import plan

    return plan(q, k_cache, v_cache, block_table, seq_lens, scale=scale), lambda out: out


@register("paged_attention", "triton_paged", kind="triton", devices=("cuda", "interpret"), requires=("triton",),
          prepare=prepare, supports={"dtypes": ("float16", "bfloat16", "float32"), "check": _unsupported})
def triton_paged(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    from llmopt.impls.paged_attention._triton_paged_kernels import paged_decode

    return paged_decode(q, k_cache, v_cache, block_table, seq_lens, scale=scale)
