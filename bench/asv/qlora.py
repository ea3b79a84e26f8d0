"""asv benchmarks of every QLoRA impl (peft + bitsandbytes Linear4bit): median milliseconds (and peak CUDA MB) per
impl x case x fwd/bwd; the contract's bench cases on CUDA, its quick cases on CPU."""
from llmopt.bench.asv._suite import technique_suite

Qlora = technique_suite("qlora")
