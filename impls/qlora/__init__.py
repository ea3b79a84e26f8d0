"""Impls of the qlora contract (reference/qlora.py)."""
