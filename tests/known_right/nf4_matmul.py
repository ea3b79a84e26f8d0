"""A correct NF4 matmul held to the contract as a user kernel: per block sums of level × x in float32, times the
block's absmax, as a fused GEMV does."""
import torch
from llmopt.reference.nf4 import dequantize_absmax
from llmopt.reference.nf4_format import nf4_table


def blockwise_fp32(x, state):
    N, K = state.shape
    if K % state.blocksize:  # blocks span rows: decode the whole weight first
        codes = torch.stack([state.codes.long() >> 4, state.codes.long() & 15], 1).reshape(-1)[:N * K]
        absmax = dequantize_absmax(state).repeat_interleave(state.blocksize)[:N * K]
        return (x.float() @ (nf4_table()[codes] * absmax).reshape(N, K).mT).to(x.dtype)
    codes = torch.stack([state.codes.long() >> 4, state.codes.long() & 15], 1).reshape(N, K // state.blocksize, -1)
    levels = nf4_table()[codes]  # (N, blocks per row, blocksize)
    xs = x.float().reshape(-1, K // state.blocksize, state.blocksize)  # (M, blocks per row, blocksize)
    sums = torch.einsum("nbk,mbk->mnb", levels, xs)  # (M, N, blocks per row)
    absmax = dequantize_absmax(state).reshape(N, -1)
    return (sums * absmax).sum(-1).reshape(*x.shape[:-1], N).to(x.dtype)
