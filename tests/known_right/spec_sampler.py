"""Correct rejection samplers held to the contract as user kernels: the reference, and an exponential race (the token
after the decision is argmax weight / Exp(1), as vLLM samples its recovered tokens) with per-position uniforms."""
import torch

from llmopt.reference.spec_decoding import verify_tokens


def reference(draft_tokens, draft_probs, target_probs, generator):
    return verify_tokens(draft_tokens, draft_probs, target_probs, generator)


def exponential_race(draft_tokens, draft_probs, target_probs, generator):
    T, k = draft_tokens.shape
    rows = torch.arange(T, device=draft_tokens.device)
    u = torch.rand((T, k), generator=generator, device=draft_tokens.device, dtype=torch.float64)
    index = draft_tokens.unsqueeze(2)
    p, q = target_probs[:, :k].gather(2, index).squeeze(2), draft_probs.gather(2, index).squeeze(2)
    accepted = (u * q < p).long().cumprod(1).sum(1)  # (T,)
    weights = target_probs[rows, accepted]
    weights = (weights - draft_probs[rows, accepted.clamp(max=k - 1)] * (accepted < k).unsqueeze(1)).clamp(min=0)
    race = torch.empty(weights.shape, dtype=torch.float64, device=weights.device).exponential_(generator=generator)
    last = (weights / race).argmax(1)
    out = torch.where(torch.arange(k + 1, device=rows.device) < accepted.unsqueeze(1),
                      torch.nn.functional.pad(draft_tokens, (0, 1)), -1)
    out[rows, accepted] = last
    return out
