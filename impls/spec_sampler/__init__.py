"""Impls of the spec_sampler contract (reference/spec_decoding.py): the batched rejection sampler of speculative
decoding."""
