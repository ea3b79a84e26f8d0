"""asv benchmarks of every NF4 matmul impl that runs natively here (fused Triton, bitsandbytes matmul_4bit, the bf16
dense baseline): median milliseconds (and peak CUDA MB) per impl x case (bwd skipped: forward only). On CUDA the
4096x4096 and 28672x8192 weights at batch 1 and 16 with double quantization; on CPU the contract's quick cases."""
from llmopt.bench.asv._suite import technique_suite

Nf4Matmul = technique_suite("nf4_matmul", on_cuda=lambda case: case.double_quant and case.N in (4096, 28672))
