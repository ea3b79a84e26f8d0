"""asv benchmarks of every LoRA impl that runs natively here (fused Triton vs peft): median milliseconds (and peak
CUDA MB) per impl x case x fwd/bwd. On CUDA r = 16, in = 4096, out = 4096, at 16 and 8192 tokens; on CPU the
contract's quick cases."""
from llmopt.bench.asv._suite import technique_suite

Lora = technique_suite("lora", on_cuda=lambda case: case.n_out == 4096 and case.batch[0] in (16, 8192))
