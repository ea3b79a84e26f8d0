"""Registered impl: the in-house Triton rejection sampler (batched, any vocabulary size and strides, float32/float64):
vocabulary-chunk sums of the row each sequence samples from, then an inverse-CDF draw inside the chosen chunk; the
kernels live in _triton_rejection_kernels (imported on first call, so registering needs no Triton). Random numbers:
one torch.rand((T, k + 1)) from the caller's generator, outside the kernels."""
from llmopt.impls import register


@register("spec_sampler", "triton_rejection", kind="triton", devices=("cuda", "interpret"), requires=("triton",))
def triton_rejection(draft_tokens, draft_probs, target_probs, generator):
    from llmopt.impls.spec_sampler._triton_rejection_kernels import rejection_sample
    return rejection_sample(draft_tokens, draft_probs, target_probs, generator)
