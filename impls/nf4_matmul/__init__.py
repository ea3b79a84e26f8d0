"""Impls of the nf4_matmul contract (reference/nf4.py)."""
