"""Correct rejection samplers held to the contract as user kernels: the reference."""
from llmopt.reference.spec_decoding import verify_tokens


def reference(draft_tokens, draft_probs, target_probs, generator):
    return verify_tokens(draft_tokens, draft_probs, target_probs, generator)
