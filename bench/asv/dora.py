"""asv benchmarks of every DoRA impl (peft use_dora): median milliseconds (and peak CUDA MB) per impl x case x
fwd/bwd; the contract's bench cases on CUDA, its quick cases on CPU."""
from llmopt.bench.asv._suite import technique_suite

Dora = technique_suite("dora")
