"""asv benchmarks of every NF4 quantize/dequantize impl (bitsandbytes, in-house Triton): median milliseconds (and peak
CUDA MB) per impl x case; the contract's bench cases on CUDA (4096 x 4096, with and without double quantization),
quick cases on CPU."""
from llmopt.bench.asv._suite import technique_suite

Nf4 = technique_suite("nf4")
