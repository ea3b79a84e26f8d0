"""asv benchmarks of every attention impl that runs natively here: median milliseconds (and peak CUDA MB on a GPU)
per impl x case x fwd/bwd. On CUDA the bench cases at N = M = 4096 (head dims 64 and 128, causal or not, GQA 32/8);
on CPU the contract's quick cases."""
from llmopt.bench.asv._suite import technique_suite

Attention = technique_suite("attention", on_cuda=lambda case: case.N == case.M == 4096)
