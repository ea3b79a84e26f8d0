"""Impls of the paged_attention contract (reference/paged_attention.py)."""
