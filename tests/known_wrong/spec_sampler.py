"""Known-wrong rejection samplers, each with one classic bug; `llmopt verify spec_sampler --impl FILE:FUNC` must reject
every one on CPU within the contract's trial budget. Written as a sampler author would, not from the reference module:
one batched sampler with switches, each public function flipping one (the last three break the layout, mix rows up or
write into their inputs)."""
import torch


def _sampler(draft_tokens, draft_probs, target_probs, generator, *, ratio=lambda p, q: p / q,
             residual=lambda p, q: (p - q).clamp(min=0), normalize=True, shared_uniform=False, bonus_row=None,
             rejection_row=None):
    """The sampler with its parts replaceable: ratio(p, q) for acceptance, residual(p, q) after a rejection, an
    inverse CDF that renormalizes (or not), one uniform per position (or one per row), the bonus row (default
    target_probs[:, k]) and the row resampled from on rejection (default residual)."""
    T, k = draft_tokens.shape
    rows = torch.arange(T, device=draft_tokens.device)
    u = torch.rand((T, 1 if shared_uniform else k), generator=generator, device=draft_tokens.device).expand(T, k)
    index = draft_tokens.unsqueeze(2)
    p, q = target_probs[:, :k].gather(2, index).squeeze(2), draft_probs.gather(2, index).squeeze(2)
    accepted = (u < ratio(p, q).clamp(max=1)).long().cumprod(1).sum(1)  # (T,)
    position = accepted.clamp(max=k - 1)
    p_rows, q_rows = target_probs[rows, position], draft_probs[rows, position]  # (T, V)
    after_rejection = residual(p_rows, q_rows) if rejection_row is None else rejection_row(p_rows, q_rows)
    bonus = target_probs[:, k] if bonus_row is None else bonus_row(draft_probs, target_probs)
    weights = torch.where((accepted < k).unsqueeze(1), after_rejection, bonus).double()
    v = torch.rand((T, 1), generator=generator, device=draft_tokens.device, dtype=torch.float64)
    cdf = weights.cumsum(1)
    if normalize:
        cdf = cdf / cdf[:, -1:]
    last = torch.searchsorted(cdf, v, right=True).squeeze(1).clamp(max=weights.shape[1] - 1)
    out = torch.where(torch.arange(k + 1, device=rows.device) < accepted.unsqueeze(1),
                      torch.nn.functional.pad(draft_tokens, (0, 1)), -1)
    out[rows, accepted] = last
    return out


def residual_q_minus_p(draft_tokens, draft_probs, target_probs, generator):
    """Resamples after a rejection from max(0, q - p) instead of max(0, p - q)."""
    return _sampler(draft_tokens, draft_probs, target_probs, generator, residual=lambda p, q: (q - p).clamp(min=0))


def acceptance_q_over_p(draft_tokens, draft_probs, target_probs, generator):
    """Accepts with probability min(1, q/p) instead of min(1, p/q)."""
    return _sampler(draft_tokens, draft_probs, target_probs, generator, ratio=lambda p, q: q / p)


def unnormalized_residual_cdf(draft_tokens, draft_probs, target_probs, generator):
    """Inverse-CDF sampling over max(0, p - q) without renormalizing it: a uniform beyond its mass falls on the last
    token."""
    return _sampler(draft_tokens, draft_probs, target_probs, generator, normalize=False)


def one_uniform_for_all_positions(draft_tokens, draft_probs, target_probs, generator):
    """Draws one acceptance uniform per row and reuses it at every position."""
    return _sampler(draft_tokens, draft_probs, target_probs, generator, shared_uniform=True)


def bonus_from_draft(draft_tokens, draft_probs, target_probs, generator):
    """Draws the bonus token (all k drafts kept) from the draft's last distribution instead of the target's next."""
    return _sampler(draft_tokens, draft_probs, target_probs, generator,
                    bonus_row=lambda draft_probs, target_probs: draft_probs[:, -1])


def resample_from_target(draft_tokens, draft_probs, target_probs, generator):
    """After a rejection, resamples from the target p itself instead of the residual max(0, p - q)."""
    return _sampler(draft_tokens, draft_probs, target_probs, generator, rejection_row=lambda p, q: p)


def ignores_generator(draft_tokens, draft_probs, target_probs, generator):
    """Correct rule, but draws its random numbers from torch's global generator instead of `generator`."""
    return _sampler(draft_tokens, draft_probs, target_probs, torch.default_generator)


def pads_with_zero(draft_tokens, draft_probs, target_probs, generator):
    """Correct rule, but fills the positions after the last emitted token with 0 instead of -1."""
    return _sampler(draft_tokens, draft_probs, target_probs, generator).clamp(min=0)


def first_row_for_all(draft_tokens, draft_probs, target_probs, generator):
    """Reads every row's distributions from row 0 (a broadcast bug): right only when all rows share them."""
    return _sampler(draft_tokens, draft_probs[:1].expand_as(draft_probs), target_probs[:1].expand_as(target_probs),
                    generator)


def residual_in_place(draft_tokens, draft_probs, target_probs, generator):
    """Correct output, but writes max(0, p - q) over the target rows it resampled from (saving a buffer)."""
    out = _sampler(draft_tokens, draft_probs, target_probs, generator)
    T, k = draft_tokens.shape
    accepted = (out >= 0).sum(1) - 1
    rows = torch.arange(T, device=out.device)[accepted < k]
    at = accepted[rows]
    target_probs[rows, at] = (target_probs[rows, at] - draft_probs[rows, at]).clamp(min=0)
    return out
