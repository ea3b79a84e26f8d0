"""asv benchmarks of every paged_attention impl that runs natively here: median milliseconds (and peak CUDA MB on a
GPU) per impl x case. On CUDA the bench cases at context 4096 (batch 1, 16, 64; GQA 32/8 and MHA 32/32) and batch 1
at context 65536 (split-KV); on CPU the contract's quick cases."""
from llmopt.bench.asv._suite import technique_suite

PagedAttention = technique_suite(
    "paged_attention", on_cuda=lambda case: case.lengths == (4096,) or (case.B == 1 and case.lengths == (65536,)))
