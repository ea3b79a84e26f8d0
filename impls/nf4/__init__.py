"""Impls of the nf4 contract (reference/nf4.py)."""
