"""asv benchmarks of every paged_attention impl that runs natively here: median milliseconds (and peak CUDA MB on a
GPU) per impl x case. On CUDA the bench cases batch 16 at context 4096 and batch 1 at
context 65536 (split-KV), GQA 32/8 and MHA 32/32; on CPU the contract's quick cases."""
from llmopt.bench.asv._suite import technique_suite

PagedAttention = technique_suite(
    "paged_attention", on_cuda=lambda case: (case.B, case.lengths) in ((16, (4096,)), (1, (65536,))))
