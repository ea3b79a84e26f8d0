"""A correct QLoRA layer held to the contract as a user kernel: the reference (dequantize, then LoRA in the dtype)."""
from llmopt.reference.qlora import qlora_linear


def reference(x, state, A, B, *, scaling):
    return qlora_linear(x, state, A, B, scaling=scaling)
