"""bitsandbytes' matmul_4bit with an NF4 state (its fused 4-bit GEMV/GEMM kernels on CUDA, dequantize + linear on
CPU), the state handed over as Linear4bit holds it: packed bytes transposed, a QuantState (nested with double
quantization)."""
from llmopt.impls import register
from llmopt.impls.nf4.bnb import run_eagerly_on_cpu


def prepare(x, state):
    import bitsandbytes as bnb
    from llmopt.impls.nf4._bnb_state import to_bitsandbytes

    packed, quant_state = to_bitsandbytes(state)

    def run():
        with run_eagerly_on_cpu(x.device):
            return bnb.matmul_4bit(x, packed.t(), quant_state=quant_state)

    return run, lambda out: out


# On CPU its dequantization (AVX-512) misplaces the absmax of blocks that span two rows (K % blocksize != 0): see
# impls/nf4/bnb.py.
@register("nf4_matmul", "bnb_matmul_4bit", kind="library", devices=("cpu", "cuda"), requires=("bitsandbytes",),
          supports={"k_not_multiple_of_blocksize": ("cuda",)}, prepare=prepare)
def bnb_matmul_4bit(x, state):
    run, _ = prepare(x, state)
    return run()
