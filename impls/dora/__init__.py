"""Impls of the dora contract (reference/dora.py)."""
