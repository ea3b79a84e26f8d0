"""asv benchmarks of every attention impl that runs natively here: median milliseconds (and peak CUDA MB on a GPU)
per impl x case x fwd/bwd. On CUDA the bench cases B=4, H=16, N = M = 4096, D=128, causal and not;
on CPU the contract's quick cases."""
from llmopt.bench.asv._suite import technique_suite

Attention = technique_suite("attention", on_cuda=lambda case: case.N == case.M == 4096 and case.D == 128
                            and case.Hq == case.Hkv == 16)
