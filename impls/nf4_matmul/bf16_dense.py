"""The dense baseline, not an NF4 kernel: the weight dequantized once to the state's dtype (bf16 in the benchmarks)
outside the timed region, then torch's linear (cuBLAS GEMV/GEMM on CUDA). What the NF4 kernels race against."""
import torch
from llmopt.impls import register
from llmopt.reference.nf4_format import DQ_BLOCKSIZE, dynamic_table, nf4_table


def dense_weight(state) -> torch.Tensor:
    """(N, K) in state.dtype: NF4 level of each nibble (high first) times its block's absmax, in float32, rounded
    once."""
    absmax = state.absmax
    if state.double_quant:
        scales = state.absmax_scales.repeat_interleave(DQ_BLOCKSIZE)[:state.blocks]
        absmax = dynamic_table(absmax.device)[absmax.long()] * scales + state.absmax_offset
    nibbles = torch.stack([state.codes >> 4, state.codes & 15], dim=1).reshape(-1)[:state.numel].long()
    values = nf4_table(state.codes.device)[nibbles] * absmax.repeat_interleave(state.blocksize)[:state.numel]
    return values.to(state.dtype).reshape(state.shape)


def prepare(x, state):
    weight = dense_weight(state)
    return (lambda: torch.nn.functional.linear(x, weight)), (lambda out: out)


@register("nf4_matmul", "bf16_dense", kind="torch", devices=("cpu", "cuda"), prepare=prepare)
def bf16_dense(x, state):
    run, _ = prepare(x, state)
    return run()
