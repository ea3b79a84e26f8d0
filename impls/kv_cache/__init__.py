"""Impls of the kv_cache contract (reference/kv_cache.py)."""
