"""Impls of the lora contract (reference/lora.py)."""
