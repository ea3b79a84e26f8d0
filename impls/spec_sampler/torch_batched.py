"""Registered impl: the rejection sampler of speculative decoding in batched PyTorch (Leviathan et al. 2023): one gather
for the drafts' probabilities, the first rejection found by comparison, and one inverse-CDF draw per row over the only
V-row it needs (the residual at the first rejection, or the bonus row). Random numbers: one torch.rand (T, k + 1)."""
from llmopt.impls import register


@register("spec_sampler", "torch_batched", kind="torch", devices=("cpu", "cuda"))
def torch_batched(draft_tokens, draft_probs, target_probs, generator):
    """draft_tokens (T, k) int64, draft_probs (T, k, V), target_probs (T, k + 1, V) -> (T, k + 1) int64."""
    import torch

    T, k = draft_tokens.shape
    device = draft_tokens.device
    rows = torch.arange(T, device=device)
    uniforms = torch.rand((T, k + 1), generator=generator, device=device)  # (T, k + 1): k acceptances, 1 final draw
    index = draft_tokens.unsqueeze(2)
    p = target_probs[:, :k].gather(2, index).squeeze(2)  # (T, k)
    q = draft_probs.gather(2, index).squeeze(2)  # (T, k)
    # kept iff u < p / q (q > 0), compared as u q < p in float64, where u q is exact for float32 inputs: rounding
    # never rejects a draft the target gives as much probability as the draft
    rejected = uniforms[:, :k].double() * q.double() >= p.double()
    accepted = torch.where(rejected.any(1), rejected.int().argmax(1), k)  # (T,): drafts before the first rejection
    weights = target_probs[rows, accepted]  # (T, V): p at the decision position; the bonus row when accepted == k
    at_rejection = (accepted < k).unsqueeze(1).to(weights.dtype)
    weights = (weights - draft_probs[rows, accepted.clamp(max=k - 1)] * at_rejection).clamp_(min=0)  # max(0, p - q)
    cdf = torch.cumsum(weights, 1, dtype=torch.float64)  # (T, V), unnormalized
    total = cdf[:, -1:]
    # first index with cdf > u * total; u * total is kept below total so the token always has weight > 0
    threshold = torch.minimum(uniforms[:, k:].double() * total, torch.nextafter(total, torch.zeros_like(total)))
    last = torch.searchsorted(cdf, threshold, right=True).squeeze(1).clamp_(max=weights.shape[1] - 1)
    positions = torch.arange(k + 1, device=device)
    out = torch.where(positions < accepted.unsqueeze(1), torch.nn.functional.pad(draft_tokens, (0, 1)), -1)
    out[rows, accepted] = last
    return out
