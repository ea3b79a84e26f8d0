"""asv benchmarks of every KV-cache decode impl (in-house reference loop, HF Llama with DynamicCache): median
milliseconds (and peak CUDA MB) per impl x case; the contract's bench cases on CUDA (batch 1 and 16), its quick cases
on CPU."""
from llmopt.bench.asv._suite import technique_suite

KvCache = technique_suite("kv_cache")
