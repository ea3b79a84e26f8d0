"""Correct DoRA layers held to the contract as user kernels: the reference, and peft's formulation written out
(base + (m/||V|| - 1)·base + (m/||V||)·scaling·(x·Aᵀ)·Bᵀ, the norm detached)."""
import torch
from llmopt.reference.dora import dora_linear


def reference(x, W0, A, B, m, *, scaling):
    return dora_linear(x, W0, A, B, m, scaling=scaling)


def base_plus_scaled_update(x, W0, A, B, m, *, scaling):
    norm = torch.linalg.vector_norm(W0 + scaling * (B @ A), dim=1).detach()
    ratio = m / norm
    base = x @ W0.mT
    return (ratio - 1) * base + base + ratio * scaling * ((x @ A.mT) @ B.mT)
