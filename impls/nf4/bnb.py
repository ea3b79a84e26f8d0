"""bitsandbytes' quantize_4bit / dequantize_4bit (quant_type="nf4", compress_statistics = double quantization), on
CPU (its torch + C++ CPU backend) and CUDA."""
from llmopt.impls import register

# Where bitsandbytes 0.50.2's CPU build departs from the format (found by this contract, shown in tests/test_nf4.py):
# - double quantization: the absmax codes come from a 65536-entry lookup table (csrc/cpu_ops.cpp, build_quantize_lut),
#   the value snapped to a grid of step 2/65535 first, so codes differ from the nearest code up to 1.5e-5 from a
#   threshold, far beyond a few ulps; the CUDA build searches the sorted map exactly.
# - dequantization with AVX-512 indexes the absmax of row r, column c as absmax[r * (cols // blocksize) + c //
#   blocksize] (dequantizeBlockwise4bitCpu), wrong when a block spans two rows (cols % blocksize != 0).
CPU_DEPARTURES = {"double_quant": ("cuda",), "block_spans_rows": ("cuda",)}


def run_eagerly_on_cpu(device):
    """A context in which bitsandbytes' default CPU kernels, wrapped in torch.compile (one compile per shape, seconds
    each on CPU), run as the same torch ops eagerly; a no-op on CUDA."""
    import contextlib

    import torch

    return torch.compiler.set_stance("force_eager") if device.type == "cpu" else contextlib.nullcontext()


@register("nf4", "bnb", kind="library", devices=("cpu", "cuda"), requires=("bitsandbytes",), supports=CPU_DEPARTURES)
def bnb(w, *, blocksize=64, double_quant=False):
    import bitsandbytes.functional as F
    from llmopt.impls.nf4._bnb_state import from_bitsandbytes

    with run_eagerly_on_cpu(w.device):
        packed, quant_state = F.quantize_4bit(w, blocksize=blocksize, compress_statistics=double_quant,
                                              quant_type="nf4")
        w_hat = F.dequantize_4bit(packed, quant_state)
    # dequantize_4bit returns its result transposed when the packed tensor has one row (a weight of <= 2 elements, a
    # backward-compatibility shim for [1, bytes] callers); those 2 values are in order either way.
    return from_bitsandbytes(packed, quant_state), w_hat.reshape(w.shape)
