"""Known-wrong rejection samplers, each with one classic bug; `llmopt verify spec_sampler --impl FILE:FUNC` must reject
every one on CPU within the contract's trial budget. Written as a sampler author would, not from the reference module:
one batched sampler with switches, each public function flipping one (from pads_with_zero on they break the layout,
mix rows up, write into their inputs, share random numbers between rows, or go wrong only at some draft lengths or
batch sizes)."""
import torch


def _sampler(draft_tokens, draft_probs, target_probs, generator, *, ratio=lambda p, q: p / q,
             residual=lambda p, q: (p - q).clamp(min=0), normalize=True, shared_uniform=False, bonus_row=None,
             rejection_row=None, row_offsets=None, checked_positions=None):
    """The sampler with its parts replaceable: ratio(p, q) for acceptance, residual(p, q) after a rejection, an
    inverse CDF that renormalizes (or not), one uniform per position (or one per row), the bonus row (default
    target_probs[:, k]) and the row resampled from on rejection (default residual). row_offsets(T, k): where each
    row's k + 1 uniforms start in one flat draw (default: a (T, k) draw and a (T, 1) one); checked_positions: how many
    drafts the acceptance test looks at (the rest kept unchecked)."""
    T, k = draft_tokens.shape
    rows = torch.arange(T, device=draft_tokens.device)
    if row_offsets is None:
        u = torch.rand((T, 1 if shared_uniform else k), generator=generator, device=draft_tokens.device).expand(T, k)
    else:  # a row's k acceptance uniforms and its last one, read from a flat draw
        starts = row_offsets(T, k).to(draft_tokens.device)
        flat = torch.rand(int(starts.max()) + k + 1, generator=generator, device=draft_tokens.device)
        u = flat[starts.unsqueeze(1) + torch.arange(k + 1, device=draft_tokens.device)]  # (T, k + 1)
        u, last_uniform = u[:, :k], u[:, k:]
    index = draft_tokens.unsqueeze(2)
    p, q = target_probs[:, :k].gather(2, index).squeeze(2), draft_probs.gather(2, index).squeeze(2)
    kept = u < ratio(p, q).clamp(max=1)
    if checked_positions is not None:
        kept[:, checked_positions:] = True
    accepted = kept.long().cumprod(1).sum(1)  # (T,)
    position = accepted.clamp(max=k - 1)
    p_rows, q_rows = target_probs[rows, position], draft_probs[rows, position]  # (T, V)
    after_rejection = residual(p_rows, q_rows) if rejection_row is None else rejection_row(p_rows, q_rows)
    bonus = target_probs[:, k] if bonus_row is None else bonus_row(draft_probs, target_probs)
    weights = torch.where((accepted < k).unsqueeze(1), after_rejection, bonus).double()
    v = (torch.rand((T, 1), generator=generator, device=draft_tokens.device, dtype=torch.float64)
         if row_offsets is None else last_uniform.double())
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


def random_offsets_overlap_rows(draft_tokens, draft_probs, target_probs, generator):
    """One flat draw of uniforms, row t reading k + 1 of them from offset t k (not t (k + 1)): every row's own uniforms
    are independent, so each row's law is exact, but a row's last uniform is the next row's first."""
    return _sampler(draft_tokens, draft_probs, target_probs, generator, row_offsets=lambda T, k: torch.arange(T) * k)


def checks_at_most_four_drafts(draft_tokens, draft_probs, target_probs, generator):
    """Unrolled for four drafts: the acceptance test stops at position 4 and later drafts are kept unchecked (right
    for k <= 4)."""
    return _sampler(draft_tokens, draft_probs, target_probs, generator, checked_positions=4)


def partial_block_resamples_from_target(draft_tokens, draft_probs, target_probs, generator):
    """Rows in blocks of 64, the partial last block through a fallback that resamples from the target p itself after
    a rejection (right whenever T is a multiple of 64)."""
    T = draft_tokens.shape[0]
    out = _sampler(draft_tokens, draft_probs, target_probs, generator)
    full = T // 64 * 64
    if full < T:
        out[full:] = _sampler(draft_tokens[full:], draft_probs[full:], target_probs[full:], generator,
                              rejection_row=lambda p, q: p)
    return out


def pads_to_the_longest_row(draft_tokens, draft_probs, target_probs, generator):
    """Collects each row's emitted tokens and pads them to the longest row with -1 (pad_sequence), not to k + 1: the
    shape is right only when some row kept all its drafts, as it does in large batches."""
    out = _sampler(draft_tokens, draft_probs, target_probs, generator)
    emitted = [row[row >= 0] for row in out]
    return torch.nn.utils.rnn.pad_sequence(emitted, batch_first=True, padding_value=-1)


def fractional_acceptance_two_percent_low(draft_tokens, draft_probs, target_probs, generator):
    """Scales the acceptance probability p/q by 0.98 where it is below 1 (a fudge factor), keeping every draft with
    p >= q: each row's acceptance a few percent low, the residual right."""
    return _sampler(draft_tokens, draft_probs, target_probs, generator,
                    ratio=lambda p, q: torch.where(p < q, 0.98 * p / q, p / q))


def one_row_takes_the_residuals_argmax(draft_tokens, draft_probs, target_probs, generator):
    """A fast path for one sequence (T = 1) that, after a rejection, emits the residual's most likely token instead of
    sampling it: right for any batch of two rows or more."""
    if draft_tokens.shape[0] > 1:
        return _sampler(draft_tokens, draft_probs, target_probs, generator)
    return _sampler(draft_tokens, draft_probs, target_probs, generator,
                    rejection_row=lambda p, q: torch.nn.functional.one_hot((p - q).clamp(min=0).argmax(1),
                                                                           p.shape[1]).to(p.dtype))
