"""asv benchmarks of every spec_sampler impl that runs natively here: median milliseconds (and peak CUDA MB on a GPU)
per impl x case. On CUDA the bench cases at V = 128256 (16 and 1024 rows, k = 4); on CPU the contract's quick cases."""
from llmopt.bench.asv._suite import technique_suite

SpecSampler = technique_suite("spec_sampler", on_cuda=lambda case: case.V == 128256 and case.rows in (16, 1024))
