"""FlashInfer's BatchDecodeWithPagedKVCacheWrapper (NHD, the cache as a (k_cache, v_cache) tuple): `prepare` turns
the block table into FlashInfer's CSR page list and runs plan() outside the timing; tensor-core decode for GQA groups
of 4 or more. FlashInfer compiles its kernels at first use with the host's nvcc."""
from __future__ import annotations

from llmopt.impls import register

HALF = ("float16", "bfloat16")
WORKSPACE_BYTES = 128 * 1024 * 1024  # FlashInfer's recommended float workspace (split-KV partial results)


def _unsupported(case):
    return None if case.D in (64, 128, 256) else "head dim not 64, 128 or 256"


def csr_pages(block_table, seq_lens, block_size: int):
    """(indptr (B + 1,), indices (total pages,), last_page_len (B,)) int32: sequence b's pages are
    indices[indptr[b]:indptr[b + 1]], its last page holding last_page_len[b] in [1, block_size] tokens."""
    import torch

    pages = (seq_lens.long() + block_size - 1) // block_size  # (B,)
    indptr = torch.cat([pages.new_zeros(1), torch.cumsum(pages, 0)]).int()
    used = torch.arange(block_table.shape[1], device=block_table.device)[None, :] < pages[:, None]  # (B, max_blocks)
    return indptr, block_table[used].int(), (seq_lens.long() - (pages - 1) * block_size).int()


def prepare(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    import flashinfer
    import torch

    _, Hq, D = q.shape
    _, block_size, Hkv, _ = k_cache.shape
    workspace = torch.zeros(WORKSPACE_BYTES, dtype=torch.uint8, device=q.device)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD", use_tensor_cores=Hq // Hkv >= 4)
    indptr, indices, last_page_len = csr_pages(block_table, seq_lens, block_size)
    wrapper.plan(indptr, indices, last_page_len, Hq, Hkv, D, block_size, pos_encoding_mode="NONE",
                 q_data_type=q.dtype, kv_data_type=k_cache.dtype, sm_scale=scale)
    return (lambda: wrapper.run(q, (k_cache, v_cache))), (lambda out: out)


@register("paged_attention", "flashinfer_decode", kind="library", devices=("cuda",), requires=("flashinfer",),
          prepare=prepare, supports={"dtypes": HALF, "check": _unsupported})
def flashinfer_decode(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    run, _ = prepare(q, k_cache, v_cache, block_table, seq_lens, scale=scale)
    return run()
