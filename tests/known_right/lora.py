"""Correct LoRA layers held to the contract as user kernels: the reference formula, and the shrink-expand form that
accumulates a half-precision layer in float32 and rounds once (as fused kernels do), with and without the adapter."""
import torch
from llmopt.reference.lora import lora_linear


def reference(x, W, A, B, *, scaling):
    return lora_linear(x, W, A, B, scaling=scaling)


def float32_accumulation(x, W, A, B, *, scaling):
    wide = torch.float64 if x.dtype == torch.float64 else torch.float32
    x32, W32, A32, B32 = (t.to(wide) for t in (x, W, A, B))
    shrunk = (scaling * (x32 @ A32.mT)).to(x.dtype).to(wide)  # (..., r) rounded once, like a fused kernel's operand
    return (x32 @ W32.mT + shrunk @ B32.mT).to(x.dtype)
