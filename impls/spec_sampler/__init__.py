"""Impls of the spec_sampler contract (reference/spec_sampler.py)."""
