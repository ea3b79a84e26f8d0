"""Speculative decoding (seed 2.4; Leviathan et al. 2023, "Fast Inference from Transformers via Speculative Decoding";
Chen et al. 2023): the batched rejection sampler (the `spec_sampler` contract), the draft-then-verify loop and its
greedy form over any next-token functions, exact float64 laws of both by enumeration, the expected tokens per step."""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from llmopt.reference import tolerance
from llmopt.reference.contract import Call, Claim, Contract, Cost, Property, PropertyFailed, dtype_of

MAX_ROWS = 1024  # rows (sequences) one verify_tokens call receives, at most
PROBABILITY_DTYPES = (torch.float32, torch.float64)
SUM_TOLERANCE = 1e-3  # a probability row must sum to 1 within this

# --------------------------------------------------------------------------------------------------- the rule


def acceptance_probability(p_draft: torch.Tensor, q_draft: torch.Tensor) -> torch.Tensor:
    """min(1, p(x) / q(x)) for drafted tokens x, elementwise (q(x) > 0: the draft proposed x)."""
    return torch.clamp(p_draft / q_draft, max=1.0)


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)) over the last dimension, what a rejection resamples from: (..., V) -> (..., V). Where the
    residual is zero everywhere (p <= q elementwise, so only rounding could have rejected) it is the target p."""
    residual = torch.clamp(p - q, min=0)
    total = residual.sum(-1, keepdim=True)
    return torch.where(total > 0, residual / torch.where(total > 0, total, 1.0), p / p.sum(-1, keepdim=True))


def acceptance_rate(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """alpha = sum_x min(p(x), q(x)) over the last dimension: the probability that a draft token x ~ q is accepted."""
    return torch.minimum(p, q).sum(-1)


def expected_tokens_per_step(alpha: float, k: int) -> float:
    """Expected tokens one target step emits when each of k drafts is accepted with probability alpha independently:
    (1 - alpha^(k+1)) / (1 - alpha), k + 1 at alpha = 1 (Leviathan et al., eq. 1)."""
    return k + 1.0 if alpha == 1 else (1 - alpha ** (k + 1)) / (1 - alpha)


def predicted_speedup(alpha: float, k: int, cost_ratio: float) -> float:
    """Walltime improvement over target-only decoding when a draft step costs `cost_ratio` target steps:
    expected_tokens_per_step / (1 + k * cost_ratio) (Leviathan et al., theorem 3.8)."""
    return expected_tokens_per_step(alpha, k) / (1 + k * cost_ratio)


# --------------------------------------------------------------------------------------------------- the sampler


def sample_categorical(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse CDF: per row of weights (T, V) >= 0, not all 0, the first index whose cumulative weight exceeds
    u x total, u (T,) uniform in [0, 1): index v with probability weights[v] / total. -> (T,) int64."""
    cdf = weights.cumsum(1, dtype=torch.float64)  # (T, V)
    index = torch.searchsorted(cdf, uniforms.unsqueeze(1) * cdf[:, -1:], right=True).squeeze(1)
    return index.clamp(max=weights.shape[1] - 1)


def verify_tokens(draft_tokens: torch.Tensor, draft_probs: torch.Tensor, target_probs: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
    """The rejection sampler, batched over T independent sequences.
    draft_tokens (T, k) int64: the draft's proposals; draft_probs (T, k, V): the draft distribution each was drawn from;
    target_probs (T, k + 1, V): the target's distributions after the prefix and each draft prefix. Position i keeps
    draft token x with probability min(1, p(x) / q(x)), with its own uniform; the first rejection emits a token from
    norm(max(0, p - q)) there; when all k are kept, a bonus token from target_probs[:, k]. Random numbers: one
    float64 torch.rand((T, k + 1)) from `generator`, column k for the last token. Computed in the inputs' dtype, the
    inverse CDF's sums in float64.
    -> (T, k + 1) int64: the kept drafts, the resampled or bonus token, then -1."""
    T, k = draft_tokens.shape
    rows = torch.arange(T, device=draft_tokens.device)
    uniforms = torch.rand((T, k + 1), generator=generator, dtype=torch.float64, device=draft_tokens.device)
    p_draft = target_probs[:, :k].gather(2, draft_tokens.unsqueeze(2)).squeeze(2).double()  # (T, k)
    q_draft = draft_probs.gather(2, draft_tokens.unsqueeze(2)).squeeze(2).double()  # (T, k)
    kept = uniforms[:, :k] < acceptance_probability(p_draft, q_draft)  # (T, k)
    accepted = kept.long().cumprod(1).sum(1)  # (T,): drafts kept before the first rejection
    final = target_probs[rows, accepted]  # (T, V): the bonus distribution where all k were kept
    rejected = accepted < k
    final[rejected] = residual_distribution(final[rejected], draft_probs[rows[rejected], accepted[rejected]])
    positions = torch.arange(k + 1, device=draft_tokens.device)
    out = torch.where(positions < accepted.unsqueeze(1), torch.nn.functional.pad(draft_tokens, (0, 1)), -1)
    out[rows, accepted] = sample_categorical(final, uniforms[:, k])
    return out


# --------------------------------------------------------------------------------------------------- the loop

NextTokenProbs = Callable[[torch.Tensor], torch.Tensor]  # tokens (L,) int64 -> (V,) float64 next-token probabilities


def _one_hot_argmax(probs: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).to(probs.dtype)


def speculative_generate(target_next: NextTokenProbs, draft_next: NextTokenProbs, prompt: torch.Tensor,
                         new_tokens: int, k: int, generator: torch.Generator, *, greedy: bool = False,
                         sampler=verify_tokens) -> tuple[torch.Tensor, int]:
    """The draft-then-verify loop for one sequence (Leviathan et al., algorithm 1). Each target step drafts k tokens
    from draft_next, takes the k + 1 target distributions after prompt + drafts[:i] (one batched forward in a real
    model) and appends what `sampler` emits (1 to k + 1 tokens). greedy: every distribution becomes the one-hot of
    its argmax, so a draft is kept iff it is the target's argmax and the emitted token is the target's argmax: the
    output is the target's greedy decoding. prompt (L,) int64 -> (new tokens (new_tokens,), target steps)."""
    pick = _one_hot_argmax if greedy else (lambda probs: probs)
    sequence, steps = prompt, 0
    while sequence.numel() < prompt.numel() + new_tokens:
        drafted, draft_rows = sequence, []
        for _ in range(k):
            q = pick(draft_next(drafted))  # (V,)
            draft_rows.append(q)
            drafted = torch.cat([drafted, torch.multinomial(q, 1, generator=generator)])
        target_rows = [pick(target_next(drafted[:sequence.numel() + i])) for i in range(k + 1)]
        emitted = sampler(drafted[sequence.numel():].unsqueeze(0), torch.stack(draft_rows).unsqueeze(0),
                          torch.stack(target_rows).unsqueeze(0), generator)[0]  # (k + 1,)
        sequence = torch.cat([sequence, emitted[emitted >= 0]])
        steps += 1
    return sequence[prompt.numel():prompt.numel() + new_tokens], steps


def target_generate(target_next: NextTokenProbs, prompt: torch.Tensor, new_tokens: int, generator: torch.Generator,
                    *, greedy: bool = False) -> torch.Tensor:
    """Target-only autoregressive decoding (sampling, or argmax when greedy): prompt (L,) -> (new_tokens,)."""
    sequence = prompt
    for _ in range(new_tokens):
        p = target_next(sequence)
        token = p.argmax().reshape(1) if greedy else torch.multinomial(p, 1, generator=generator)
        sequence = torch.cat([sequence, token])
    return sequence[prompt.numel():]


def markov_next(table: torch.Tensor) -> NextTokenProbs:
    """Next-token function of a Markov chain: table (V, V), row = the previous token's next-token distribution."""
    return lambda tokens: table[tokens[-1]]


def positional_next(rows: torch.Tensor) -> NextTokenProbs:
    """Next-token function whose distribution depends only on the position: rows (n, V), rows[i] after i tokens."""
    return lambda tokens: rows[tokens.numel()]


# --------------------------------------------------------------------------------------------------- exact laws

Law = dict  # {tuple of tokens: probability}, float64


def step_law(target_next: NextTokenProbs, draft_next: NextTokenProbs, prefix: tuple, k: int, *,
             acceptance=acceptance_probability, residual=residual_distribution) -> Law:
    """The exact law of what one draft-then-verify step emits after `prefix`, by enumeration: each token x the draft can
    propose at each position, kept with acceptance(p(x), q(x)) or rejected and followed by each token of residual(p, q),
    and after k kept drafts each bonus token of the target. {emitted tokens: probability}, in float64."""
    law: Law = {}

    def add(emitted: tuple, mass: float):
        law[emitted] = law.get(emitted, 0.0) + mass

    def walk(kept: tuple, mass: float):
        tokens = torch.tensor(prefix + kept, dtype=torch.long)
        p = target_next(tokens).double()  # (V,)
        if len(kept) == k:
            for y, p_y in enumerate(p.tolist()):
                if p_y > 0:
                    add(kept + (y,), mass * p_y)
            return
        q = draft_next(tokens).double()  # (V,)
        keep = torch.where(q > 0, acceptance(p, torch.where(q > 0, q, 1.0)), 0.0).tolist()  # per draft token
        after_rejection = list(enumerate(residual(p, q).tolist()))
        for x, q_x in enumerate(q.tolist()):
            if q_x == 0:
                continue
            if keep[x] > 0:
                walk(kept + (x,), mass * q_x * keep[x])
            if keep[x] < 1:
                for y, r_y in after_rejection:
                    if r_y > 0:
                        add(kept + (y,), mass * q_x * (1 - keep[x]) * r_y)

    walk((), 1.0)
    return law


def speculative_law(target_next: NextTokenProbs, draft_next: NextTokenProbs, prompt: tuple, new_tokens: int, k: int,
                    **rule) -> Law:
    """Exact law of the first `new_tokens` tokens speculative_generate emits after `prompt`: steps chained by
    enumeration (step_law at every reachable prefix), the last step's overshoot cut off. `rule`: acceptance=,
    residual= replace the sampler's rule (to show that a wrong rule changes the law)."""
    law: Law = {}
    steps: dict = {}

    def walk(generated: tuple, mass: float):
        if len(generated) >= new_tokens:
            law[generated[:new_tokens]] = law.get(generated[:new_tokens], 0.0) + mass
            return
        if generated not in steps:
            steps[generated] = step_law(target_next, draft_next, prompt + generated, k, **rule)
        for emitted, probability in steps[generated].items():
            walk(generated + emitted, mass * probability)

    walk((), 1.0)
    return law


def target_law(target_next: NextTokenProbs, prompt: tuple, new_tokens: int) -> Law:
    """Exact law of the first `new_tokens` tokens of target-only sampling after `prompt`."""
    law: Law = {(): 1.0}
    for _ in range(new_tokens):
        longer: Law = {}
        for generated, mass in law.items():
            p = target_next(torch.tensor(prompt + generated, dtype=torch.long)).double()
            for y, p_y in enumerate(p.tolist()):
                if p_y > 0:
                    longer[generated + (y,)] = mass * p_y
        law = longer
    return law


def law_gap(first: Law, second: Law) -> float:
    """max over outcomes of |first - second| (an outcome missing from one has probability 0 there)."""
    return max(abs(first.get(key, 0.0) - second.get(key, 0.0)) for key in first.keys() | second.keys())


def expected_emitted(law: Law) -> float:
    """Expected number of tokens of a step law: sum of len(tokens) x probability."""
    return sum(len(tokens) * probability for tokens, probability in law.items())


# --------------------------------------------------------------------------------------------------- the signature


def _distinct(t: torch.Tensor) -> torch.Tensor:
    """The values of `t` without repeats along stride-0 (expanded) dimensions, so checks read each stored value once."""
    return t[tuple(slice(0, 1) if t.stride(d) == 0 and t.shape[d] > 1 else slice(None) for d in range(t.dim()))]


def check_spec_call(call: Call) -> None:
    """ValueError naming the expected layout unless the call is verify_tokens(draft_tokens, draft_probs, target_probs,
    generator) with draft_tokens (T, k) int64 in [0, V), draft_probs (T, k, V) and target_probs (T, k + 1, V) float32 or
    float64 probability rows (finite, >= 0, summing to 1), the draft probability of each draft token > 0,
    1 <= T <= 1024, k >= 1, one device, and a torch.Generator on that device."""
    layout = ("draft_tokens (T, k) int64, draft_probs (T, k, V) and target_probs (T, k + 1, V) float32/float64, "
              f"1 <= T <= {MAX_ROWS}, k >= 1, and a torch.Generator on their device")
    if len(call.args) != 4 or call.kwargs:
        raise ValueError(f"verify_tokens takes (draft_tokens, draft_probs, target_probs, generator): expected "
                         f"{layout}; got {len(call.args)} positional and keywords {sorted(call.kwargs)}")
    draft_tokens, draft_probs, target_probs, generator = call.args
    for name, t, dim in (("draft_tokens", draft_tokens, 2), ("draft_probs", draft_probs, 3),
                         ("target_probs", target_probs, 3)):
        if not isinstance(t, torch.Tensor) or t.dim() != dim:
            raise ValueError(f"{name} must be a {dim}-D tensor: expected {layout}; got {getattr(t, 'shape', type(t))}")
    if draft_tokens.dtype != torch.int64:
        raise ValueError(f"draft_tokens must be int64, got {draft_tokens.dtype}")
    T, k = draft_tokens.shape
    V = target_probs.shape[2]
    if not 1 <= T <= MAX_ROWS or k < 1 or V < 1:
        raise ValueError(f"expected {layout}; got T = {T}, k = {k}, V = {V}")
    if tuple(draft_probs.shape) != (T, k, V) or tuple(target_probs.shape) != (T, k + 1, V):
        raise ValueError(f"expected {layout}; got draft_tokens {tuple(draft_tokens.shape)}, draft_probs "
                         f"{tuple(draft_probs.shape)}, target_probs {tuple(target_probs.shape)}")
    if draft_probs.dtype not in PROBABILITY_DTYPES or target_probs.dtype != draft_probs.dtype:
        raise ValueError(f"draft_probs and target_probs must share a dtype, float32 or float64; got "
                         f"{draft_probs.dtype}, {target_probs.dtype}")
    if not draft_tokens.device == draft_probs.device == target_probs.device:
        raise ValueError(f"the tensors must be on one device, got {draft_tokens.device}, {draft_probs.device}, "
                         f"{target_probs.device}")
    if not isinstance(generator, torch.Generator) or generator.device.type != draft_tokens.device.type:
        raise ValueError(f"generator must be a torch.Generator on {draft_tokens.device}, got "
                         f"{getattr(generator, 'device', type(generator))}")
    if bool(((draft_tokens < 0) | (draft_tokens >= V)).any()):
        raise ValueError(f"draft_tokens must lie in [0, V = {V})")
    for name, probs in (("draft_probs", draft_probs), ("target_probs", target_probs)):
        stored = _distinct(probs)
        if not bool(torch.isfinite(stored).all()) or bool((stored < 0).any()):
            raise ValueError(f"{name} must be finite and >= 0")
        worst = float((stored.sum(-1, dtype=torch.float64) - 1).abs().max())
        if worst > SUM_TOLERANCE:
            raise ValueError(f"{name} rows must sum to 1 (within {SUM_TOLERANCE}); one is off by {worst:.3g}")
    if bool((draft_probs.gather(2, draft_tokens.unsqueeze(2)) <= 0).any()):
        raise ValueError("every draft token must have draft probability > 0 (the draft proposed it)")


# --------------------------------------------------------------------------------------------------- the cases

# How a case's distributions are made. Shared families give every row the same target rows (k + 1, V) and draft rows
# (k, V) per position: "dense" full support; "sparse" a handful of tokens including V - 1, each side with mass where the
# other has none; "equal" draft = target at the draft positions (alpha = 1); "one_hot" one-hot (greedy) targets and a
# sparse draft giving each greedy token half its mass. "markov": a draft chain Q and a target chain P (V, V) with zeros
# in different places; row t starts after token t % V, so rows differ and each position's distributions depend on the
# previous draft token.
FAMILIES = ("dense", "sparse", "equal", "one_hot", "markov")
# "expanded": shared rows as stride-0 views (nothing copied); "padded": rows inside a NaN-poisoned wider buffer;
# "contiguous": materialized (T, k + 1, V) tensors, as a model's outputs are (benchmarks).
LAYOUTS = ("expanded", "padded", "contiguous")


@dataclass(frozen=True)
class SpecCase:
    V: int
    k: int
    rows: int  # T of one call, <= 1024
    trials: int  # independent rows the distribution properties draw: ceil(trials / rows) calls
    family: str = "dense"
    dtype: str = "float32"
    layout: str = "expanded"
    seed: int = 0


def features(case: SpecCase) -> set[str]:
    return set()


@functools.lru_cache(maxsize=64)
def _tables(case: SpecCase) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, draft) float64 tables of a case, rounded to its dtype and renormalized (the law of the inputs up to one
    rounding): shared families (k + 1, V) and (k, V); markov (V, V) and (V, V)."""
    gen = torch.Generator().manual_seed(case.seed)
    V, k = case.V, case.k

    def weights(n: int, support: torch.Tensor) -> torch.Tensor:  # (n, V): random peaked rows on `support`
        w = torch.zeros(n, V, dtype=torch.float64)
        w[:, support] = torch.rand(n, support.numel(), generator=gen, dtype=torch.float64) ** 3 + 1e-3
        return w

    def subset(pool: torch.Tensor, size: int) -> torch.Tensor:
        return pool[torch.randperm(pool.numel(), generator=gen)[:size]]

    everything = torch.arange(V)
    if case.family == "markov":
        target = torch.stack([weights(1, subset(everything, max(1, 2 * V // 3)))[0] for _ in range(V)])
        draft = torch.stack([weights(1, subset(everything, max(1, 2 * V // 3)))[0] for _ in range(V)])
    elif case.family in ("dense", "equal"):
        target, draft = weights(k + 1, everything), weights(k, everything)
        if case.family == "equal":
            draft = target[:k].clone()
    else:  # sparse, one_hot: a few tokens, V - 1 always among them
        pool = torch.unique(torch.cat([torch.tensor([V - 1]), subset(everything, 5)]))
        target = torch.cat([weights(1, subset(pool, max(1, pool.numel() - 2))) for _ in range(k + 1)])
        draft = torch.cat([weights(1, subset(pool, max(1, pool.numel() - 2))) for _ in range(k)])
        if case.family == "one_hot":  # the draft gives each position's greedy token half its mass
            target = torch.nn.functional.one_hot(subset(pool.repeat(k + 1), k + 1), V).double()
            draft = draft + target[:k] * draft.sum(1, keepdim=True)
    dtype = dtype_of(case.dtype)
    rounded = [(t / t.sum(-1, keepdim=True)).to(dtype).double() for t in (target, draft)]
    return tuple(t / t.sum(-1, keepdim=True) for t in rounded)


def _place(values: torch.Tensor, case: SpecCase, rows: int, device) -> torch.Tensor:
    """Distribution rows in the case's dtype and layout: values (n, V) shared -> (rows, n, V); values (rows, n, V) as
    given, inside a NaN-poisoned buffer when the layout is "padded"."""
    values = values.to(device=device, dtype=dtype_of(case.dtype), copy=True)
    if values.dim() == 2:
        values = values.unsqueeze(0).expand(rows, *values.shape)
    if case.layout == "contiguous":
        return values.contiguous()
    if case.layout == "padded":
        buffer = torch.full((rows, values.shape[1] + 1, case.V + 5), float("nan"), dtype=values.dtype, device=device)
        buffer[:, 1:, 2:case.V + 2] = values
        return buffer[:, 1:, 2:case.V + 2]
    return values


def contexts(case: SpecCase, rows: int) -> torch.Tensor:
    """(rows,): the token each row's sequence ends with before the drafts (markov; 0 for shared families)."""
    return torch.arange(rows) % case.V if case.family == "markov" else torch.zeros(rows, dtype=torch.long)


def draw_call(case: SpecCase, rows: int, inputs: torch.Generator, sampler: torch.Generator, device) -> Call:
    """One verify_tokens call of `case` with `rows` rows: draft tokens drawn from the draft's distributions with
    `inputs`, distributions placed in the case's layout, `sampler` the generator handed to the impl."""
    target, draft = (t.to(device) for t in _tables(case))
    if case.family == "markov":
        previous = contexts(case, rows).to(device)
        drafts, before = [], [previous]
        for _ in range(case.k):
            previous = torch.multinomial(draft[previous], 1, generator=inputs).squeeze(1)
            drafts.append(previous)
            before.append(previous)
        draft_tokens = torch.stack(drafts, 1)  # (rows, k)
        history = torch.stack(before, 1)  # (rows, k + 1): the token before each position
        return Call((draft_tokens, _place(draft[history[:, :-1]], case, rows, device),
                     _place(target[history], case, rows, device), sampler))
    draft_tokens = torch.stack([torch.multinomial(draft[i], rows, replacement=True, generator=inputs)
                                for i in range(case.k)], 1)  # (rows, k)
    return Call((draft_tokens, _place(draft, case, rows, device), _place(target, case, rows, device), sampler))


def _generators(case: SpecCase, device) -> tuple[torch.Generator, torch.Generator]:
    return (torch.Generator(device).manual_seed(case.seed), torch.Generator(device).manual_seed(case.seed + 7919))


def make_call(case: SpecCase, device: str) -> Call:
    """The first call of a case (deterministic in its seed)."""
    return draw_call(case, case.rows, *_generators(case, device), device)


def trial_budget(V: int, mode: str) -> tuple[int, int]:
    """(rows per call, trials) the distribution properties use at vocabulary size V: >= 10^5 trials up to V = 1000
    (2 x 10^4 under Triton's interpreter, which runs each program in Python), a few thousand above. The rows of a call
    are odd, so a kernel that splits rows into power-of-two blocks always has a partial last block."""
    if V <= 1000:
        return MAX_ROWS - 25, (21 if mode == "interpret" else 101) * (MAX_ROWS - 25)
    rows = MAX_ROWS - 25 if V <= 40_000 else MAX_ROWS // 2 - 1
    return rows, 4 * rows


def cases(impl, mode: str):
    """Hypothesis strategy of SpecCase: odd vocabularies, k from 1 to 6, every family (above V = 1000 the small-support
    ones only), float32/float64 as the impl supports; trials by trial_budget. The CPU explores V <= 2049 (the examples
    hold the large ones), the interpreter V <= 33."""
    from hypothesis import strategies as st

    supports = impl.supports
    vocabularies = {"interpret": [2, 3, 7, 33], "cpu": [2, 3, 7, 33, 2049],
                    "cuda": [2, 7, 33, 1000, 2049, 32001, 128257]}[mode]
    dtypes = [d for d in supports.get("dtypes", ("float32", "float64"))]

    @st.composite
    def build(draw):
        V = draw(st.sampled_from(vocabularies))
        # Above V = 1000 trial_budget gives a few thousand trials: spread over ~V outcomes by full-support rows, they
        # miss a shared acceptance uniform or a bonus drawn from the draft; small supports (V - 1 among them) do not.
        if V <= 33:
            families = FAMILIES
        elif V <= 1000:
            families = ("dense", "sparse", "equal", "one_hot")
        else:
            families = ("sparse", "one_hot")
        family = draw(st.sampled_from(families))
        rows, trials = trial_budget(V, mode)
        k = draw(st.integers(1, 6 if V <= 7 else 4))
        if family == "markov":  # the full law over (context, sequence) must stay enumerable
            k = max([1] + [j for j in range(1, k + 1) if V * _sequences(V, j)[0] <= FULL_CODES])
        return SpecCase(V=V, k=k, rows=rows, trials=trials, family=family,
                        dtype=draw(st.sampled_from(dtypes)), layout="padded" if family == "markov" else "expanded",
                        seed=draw(st.integers(0, 2**16)))

    return build().filter(lambda case: CONTRACT.unsupported(case, supports) is None)


def _example(V, k, family, dtype="float32", seed=0, mode="cpu"):
    rows, trials = trial_budget(V, mode)
    return SpecCase(V, k, rows, trials, family, dtype, "padded" if family == "markov" else "expanded", seed)


LARGEST_VOCABULARY = [_example(128257, 2, "sparse", seed=8), _example(128257, 2, "one_hot", seed=9)]
# Full support at a large vocabulary, GPU only: every 4096-wide chunk of the Triton sampler carries probability (the
# hypothesis cases above V = 1000 have small supports, for power); tested by its marginals and acceptance count.
DENSE_LARGE_VOCABULARY = _example(32001, 3, "dense", seed=10)


def examples(mode: str) -> list[SpecCase]:
    """The regression grid: the odd vocabularies 7, 1000, 32001 and, on the GPU, 128257 and a dense 32001 (on the CPU
    every impl and known-wrong sampler would pay for them: tests/test_spec_decoding.py runs 128257 for torch_batched),
    every family, k from 1 to 6 (the longest drafts the strategy draws, positions past 4 reached in a tenth of the
    rows); under the interpreter V <= 33."""
    if mode == "interpret":
        return [_example(7, 3, "markov", "float64", 1, mode), _example(33, 4, "sparse", seed=2, mode=mode),
                _example(7, 2, "one_hot", seed=3, mode=mode)]
    grid = [
        _example(7, 3, "markov", "float64", 1),
        _example(7, 4, "dense", seed=2),
        _example(7, 6, "dense", seed=11),
        _example(1000, 3, "dense", seed=3),
        _example(1000, 2, "one_hot", seed=4),
        _example(7, 3, "equal", "float64", 5),
        _example(33, 1, "sparse", seed=6),
        _example(32001, 2, "sparse", seed=7),
    ]
    return grid + ([*LARGEST_VOCABULARY, DENSE_LARGE_VOCABULARY] if mode == "cuda" else [])


# --------------------------------------------------------------------------------------------------- the laws of cases

FULL_CODES = 50_000  # at most this many (context, emitted sequence) outcomes: test the full law, else its marginals


@dataclass
class CaseLaw:
    """How emitted rows are coded as integers, and the exact law of the codes after each context.
    full: codes are (context, emitted sequence): context x n_sequences + offset[length] + digits in base len(alphabet).
    Otherwise (large dense shared cases) the codes are (accepted count m, last token y): m x V + y, and each position i
    is tested apart: the tokens kept there, against q_i a_i / alpha_i."""

    full: bool
    probs: torch.Tensor  # (contexts, codes per context) float64: each row the law of the codes after that context
    lookup: torch.Tensor  # (V,) int64: token -> digit, -1 for a token no outcome contains
    radix: int
    kept_laws: torch.Tensor | None = None  # (k, V) coarse only: the law of the token kept at each position


def _sequences(radix: int, k: int) -> tuple[int, torch.Tensor]:
    """(number of sequences of length 1..k + 1 over `radix` digits, offsets (k + 2,) of each length's codes)."""
    sizes = torch.tensor([radix ** length for length in range(1, k + 2)], dtype=torch.float64)
    offsets = torch.cat([torch.zeros(1, dtype=torch.float64), sizes.cumsum(0)])
    return int(offsets[-1]), offsets.long()


@functools.lru_cache(maxsize=16)
def case_law(case: SpecCase) -> CaseLaw:
    target, draft = _tables(case)
    V, k = case.V, case.k
    context_ids = torch.arange(V) if case.family == "markov" else torch.zeros(1, dtype=torch.long)
    alphabet = torch.unique(torch.cat([target.nonzero()[:, -1], draft.nonzero()[:, -1]]))
    radix = alphabet.numel()
    lookup = torch.full((V,), -1, dtype=torch.long)
    lookup[alphabet] = torch.arange(radix)
    n_sequences, offsets = _sequences(radix, k)
    if context_ids.numel() * n_sequences <= FULL_CODES:
        probs = [0.0] * (context_ids.numel() * n_sequences)
        digit_of, starts = lookup.tolist(), offsets.tolist()
        for c in context_ids.tolist():
            if case.family == "markov":
                law = step_law(markov_next(target), markov_next(draft), (c,), k)
            else:
                law = step_law(positional_next(target), positional_next(draft), (), k)
            for tokens, probability in law.items():
                code = starts[len(tokens) - 1] + sum(digit_of[t] * radix ** j for j, t in enumerate(tokens))
                probs[c * n_sequences + code] += probability
        return CaseLaw(True, torch.tensor(probs, dtype=torch.float64).view(-1, n_sequences), lookup, radix)
    # large dense shared tables: (m, y) and the kept token of each position, from the rule's helpers
    q_safe = torch.where(draft > 0, draft, 1.0)
    keep = torch.where(draft > 0, acceptance_probability(target[:k], q_safe), 0.0)  # (k, V)
    alphas = (draft * keep).sum(1)  # (k,)
    reach = torch.cat([torch.ones(1, dtype=torch.float64), alphas.cumprod(0)])  # (k + 1,): P(m >= i)
    m_law = reach * torch.cat([1 - alphas, torch.ones(1, dtype=torch.float64)])  # (k + 1,)
    last = torch.cat([residual_distribution(target[:k], draft), target[k:]])  # (k + 1, V)
    kept_laws = draft * keep / torch.where(alphas > 0, alphas, 1.0).unsqueeze(1)  # zero rows where alpha = 0
    return CaseLaw(False, (m_law.unsqueeze(1) * last).view(1, -1), torch.arange(V), V, kept_laws)


# --------------------------------------------------------------------------------------------------- the properties

FAMILY_ALPHA = 1e-6  # false-failure rate of a whole verify run of one impl
MAX_TESTS = 256  # statistical tests a verify run makes at most at the default budget (tests/test_spec_decoding.py)
ALPHA = FAMILY_ALPHA / MAX_TESTS  # each test's level (Bonferroni)


def tests_per_case(case: SpecCase) -> int:
    """Statistical tests the properties run on one case: the law (1, or 1 + k when tested by marginals), the law of
    the one-row calls alone, the acceptance count and the scores of row pairs."""
    if not _is_random(None, case):
        return 0
    return (1 if case_law(case).full else 1 + case.k) + 3


TRIALS_PER_ONE_ROW_CALL = 500  # the distribution properties make one single-row call for each 500 trials


def one_row_calls(case: SpecCase) -> int:
    """Single-row calls (one sequence: the commonest decoding batch) the distribution properties make beside the
    case's calls of `rows`: 201 at the CPU's and GPU's trial budget up to V = 1000, 41 under the interpreter, 7 above
    V = 1000; enough for the law of their rows alone to reject a one-row path that does not sample (an argmax of the
    residual: p ~ 1e-34 on the first CPU example)."""
    return max(1, case.trials // TRIALS_PER_ONE_ROW_CALL)


def _run(impl, call: Call) -> torch.Tensor:
    """The impl's output on a validated call, checked to be (T, k + 1) int64 on the inputs' device."""
    check_spec_call(call)
    draft_tokens = call.args[0]
    out = impl.fn(*call.args)
    T, k = draft_tokens.shape
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (T, k + 1) or out.dtype != torch.int64:
        raise PropertyFailed(f"output must be a (T, k + 1) = {(T, k + 1)} int64 tensor, got "
                             f"{getattr(out, 'shape', type(out))} {getattr(out, 'dtype', '')}")
    if out.device != draft_tokens.device:
        raise PropertyFailed(f"output on {out.device}, inputs on {draft_tokens.device}")
    return out


def accepted_counts(out: torch.Tensor, draft_tokens: torch.Tensor, V: int) -> torch.Tensor:
    """(T,) accepted drafts m of each row, after checking the layout: the first m outputs are the drafts, then one token
    in [0, V), then -1 to the end."""
    out, draft_tokens = out.cpu(), draft_tokens.cpu()
    T, k = draft_tokens.shape
    emitted = out >= 0
    m = emitted.sum(1) - 1
    positions = torch.arange(k + 1)
    kept = positions.unsqueeze(0) < m.unsqueeze(1)
    bad = ((m < 0) | (emitted != (positions.unsqueeze(0) <= m.unsqueeze(1))).any(1) | (out >= V).any(1)
           | (kept[:, :k] & (out[:, :k] != draft_tokens)).any(1) | ((out < 0) & (out != -1)).any(1))
    if bad.any():
        row = int(bad.nonzero()[0])
        raise PropertyFailed(f"{int(bad.sum())} of {T} rows are not (kept drafts, one token in [0, {V}), -1 ...): "
                             f"row {row} emits {out[row].tolist()} for drafts {draft_tokens[row].tolist()}")
    return m


SCORE_BINS = 4  # bins of each of a row's two scores (row_scores): a pair of rows falls in one of SCORE_BINS^4 cells


def accepted_count_law(call: Call) -> torch.Tensor:
    """(T, k + 1) float64 on the inputs' device: the law of each row's accepted count m given its drafts, P(m = j) =
    a_0 ... a_(j-1) (1 - a_j), a_i = min(1, p_i(x_i) / q_i(x_i)) the acceptance probability of draft i, a_k = 0."""
    draft_tokens, draft_probs, target_probs, _ = call.args
    k = draft_tokens.shape[1]
    index = draft_tokens.unsqueeze(2)
    keep = acceptance_probability(target_probs[:, :k].gather(2, index).squeeze(2).double(),
                                  draft_probs.gather(2, index).squeeze(2).double())  # (T, k)
    reach = torch.nn.functional.pad(keep.cumprod(1), (1, 0), value=1.0)  # (T, k + 1): P(m >= j)
    return reach * torch.nn.functional.pad(1 - keep, (0, 1), value=1.0)


@functools.lru_cache(maxsize=16)
def _last_token_cdfs(case: SpecCase) -> torch.Tensor:
    """(laws, V + 1) float64: P(y < v) for v = 0 .. V under each law a row's last token y is drawn from, from the case's
    tables. Shared families: row j < k the residual at position j, row k the bonus row; markov: row t the residual
    after token t, row V + t the bonus row after token t."""
    target, draft = _tables(case)
    last = torch.cat([residual_distribution(target, draft), target]) if case.family == "markov" else \
        torch.cat([residual_distribution(target[:case.k], draft), target[case.k:]])
    return torch.nn.functional.pad(last.cumsum(1), (1, 0))


def row_scores(case: SpecCase, out: torch.Tensor, drafts: torch.Tensor, starts: torch.Tensor, m_law: torch.Tensor,
               randomizer: torch.Generator) -> torch.Tensor:
    """(T, 2) float64: each row's randomized probability integral transforms F(x-) + w P(x), w ~ U(0, 1) from
    `randomizer`, of its accepted count m under m_law (accepted_count_law: the law given its drafts) and of its last
    token y given m (under the law it is drawn from: the residual at position m, or the bonus row when m = k). Under
    the contract both are U(0, 1), independent of each other and across rows, however the impl draws its random
    numbers; rows that share or overlap random numbers make them dependent, even where each row's own law is exact.
    out (T, k + 1), drafts (T, k), starts (T,) (contexts), m_law (T, k + 1), on the CPU."""
    m = (out >= 0).sum(1).unsqueeze(1) - 1  # (T, 1), the layout checked by accepted_counts
    y = out.gather(1, m).squeeze(1)
    if case.family == "markov":  # the law after the token before position m
        before = torch.cat([starts.unsqueeze(1), drafts], 1).gather(1, m).squeeze(1)
        law = before + case.V * (m.squeeze(1) == case.k)
    else:
        law = m.squeeze(1)
    y_cdf = _last_token_cdfs(case)
    m_cdf = torch.nn.functional.pad(m_law.cumsum(1), (1, 0))  # (T, k + 2)
    w = torch.rand((out.shape[0], 2), generator=randomizer, dtype=torch.float64)
    score_m = m_cdf.gather(1, m).squeeze(1) + w[:, 0] * m_law.gather(1, m).squeeze(1)
    score_y = y_cdf[law, y] + w[:, 1] * (y_cdf[law, y + 1] - y_cdf[law, y])
    return torch.stack([score_m, score_y], 1)


class Samples(NamedTuple):
    out: torch.Tensor  # (N, k + 1) int64: the emitted rows
    drafts: torch.Tensor  # (N, k) int64
    starts: torch.Tensor  # (N,) int64: each row's context
    m_laws: torch.Tensor  # (N, k + 1) float64: the law of each row's accepted count given its drafts
    pairs: torch.Tensor  # (P,) int64: the binned scores of rows 2j and 2j + 1 of each call, in [0, SCORE_BINS^4)
    one_row: int  # the first one_row rows come from single-row calls


def draw_samples(impl, case: SpecCase, device: str) -> Samples:
    """The rows of one_row_calls(case) single-row calls and of ceil(trials / rows) calls of `rows`, on the CPU, each
    call's layout checked, with each row's accepted_count_law and the binned row_scores of each call's adjacent row
    pairs."""
    inputs, sampler = _generators(case, device)
    randomizer = torch.Generator().manual_seed(case.seed)
    outs, drafts, starts, m_laws, pairs = [], [], [], [], []
    single = one_row_calls(case)
    for rows in [1] * single + [case.rows] * -(-case.trials // case.rows):
        call = draw_call(case, rows, inputs, sampler, device)
        out = _run(impl, call)
        accepted_counts(out, call.args[0], case.V)
        outs.append(out.cpu())
        drafts.append(call.args[0].cpu())
        starts.append(contexts(case, rows))
        m_laws.append(accepted_count_law(call).cpu())
        if rows == 1:  # no pair of rows to score
            continue
        scores = row_scores(case, outs[-1], drafts[-1], starts[-1], m_laws[-1], randomizer)
        bins = (scores * SCORE_BINS).long().clamp(0, SCORE_BINS - 1)  # (rows, 2)
        cells = bins[:, 0] * SCORE_BINS + bins[:, 1]  # (rows,)
        paired = rows // 2 * 2
        pairs.append(cells[0:paired:2] * SCORE_BINS ** 2 + cells[1:paired:2])
    return Samples(torch.cat(outs), torch.cat(drafts), torch.cat(starts), torch.cat(m_laws), torch.cat(pairs), single)


def _codes(case: SpecCase, law: CaseLaw, out: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """(N,) the code of each emitted row (see CaseLaw); PropertyFailed for a token no outcome of the law contains."""
    digits = law.lookup[out.clamp(min=0)]  # (N, k + 1)
    emitted = out >= 0
    if (emitted & (digits < 0)).any():
        token = int(out[emitted & (digits < 0)][0])
        raise PropertyFailed(f"emitted token {token}, which has probability 0 at every position of this case")
    lengths = emitted.sum(1)
    if not law.full:
        return (lengths - 1) * case.V + out.gather(1, (lengths - 1).unsqueeze(1)).squeeze(1)
    n_sequences, offsets = _sequences(law.radix, case.k)
    powers = law.radix ** torch.arange(case.k + 1)
    return starts * n_sequences + offsets[lengths - 1] + (digits * powers * emitted).sum(1)


def _has_greedy_target(impl, case: SpecCase) -> bool:
    return case.family == "one_hot"


def _is_random(impl, case: SpecCase) -> bool:
    return not _has_greedy_target(impl, case)


def _bernstein_p(deviation: float, variance: float, bound: float) -> float:
    """Bernstein's inequality: P(|S - E S| >= deviation) <= 2 exp(-d^2 / (2 (variance + bound d / 3))) for a sum of
    independent terms each within `bound` of its mean."""
    if deviation == 0:
        return 1.0
    return min(1.0, 2 * math.exp(-deviation ** 2 / (2 * (variance + bound * deviation / 3))))


def sequence_test(case: SpecCase, out: torch.Tensor, drafts: torch.Tensor, starts: torch.Tensor, *,
                  marginals: bool = True, source: str = "") -> None:
    """G-test at level ALPHA of the emitted rows against the exact law: the full (context, sequence) law when it is
    enumerable, else the (accepted count, last token) law and, with `marginals`, at each position the law of the kept
    tokens. `source` names where the rows come from in the message."""
    law = case_law(case)
    codes = _codes(case, law, out, starts)
    observed = torch.bincount(codes, minlength=law.probs.numel()).double()
    # the contexts are the harness's choice, not drawn: each context's law weighs as much as its share of the rows
    context_share = torch.bincount(starts, minlength=law.probs.shape[0]).double() / starts.numel()
    what = "(context, emitted sequence)" if law.full else "(accepted count, last token)"
    tolerance.g_test(f"law of {what} over {out.shape[0]} rows{source}", observed,
                     (context_share.unsqueeze(1) * law.probs).flatten(), ALPHA)
    if marginals and not law.full:
        m = (out >= 0).sum(1) - 1
        for i in range(case.k):
            kept = drafts[m > i, i]
            if kept.numel() == 0:  # position i is never reached (alpha = 0 before it): the law of m said so
                continue
            tolerance.g_test(f"tokens kept at position {i} ({kept.numel()} rows)",
                             torch.bincount(kept, minlength=case.V).double(), law.kept_laws[i], ALPHA)


def single_row_test(case: SpecCase, samples: Samples) -> None:
    """sequence_test of the single-row calls' rows alone (their law, without the per-position marginals): in the
    pooled test they are a few hundred of ~10^5 rows, so a path taken only for one row must be tested on its own."""
    one = slice(0, samples.one_row)
    sequence_test(case, samples.out[one], samples.drafts[one], samples.starts[one], marginals=False,
                  source=" of single-row calls")


def acceptance_test(out: torch.Tensor, m_laws: torch.Tensor) -> None:
    """Accepted drafts per row against the law of m given the row's drafts (m_laws (N, k + 1), accepted_count_law):
    an m of probability 0 fails at once; the total must lie within the deviation Bernstein's inequality allows at
    level ALPHA (given the drafts, rows are independent, each m within k of its mean; conditioning on the drafts
    leaves their own variance out of the test's)."""
    k = m_laws.shape[1] - 1
    m = (out >= 0).sum(1) - 1
    impossible = m_laws.gather(1, m.unsqueeze(1)).squeeze(1) == 0
    if impossible.any():
        row = int(impossible.nonzero()[0])
        raise PropertyFailed(f"row {row} accepted {int(m[row])} drafts, which has probability 0 given its drafts")
    counts = torch.arange(k + 1, dtype=torch.float64)
    mean = (m_laws * counts).sum(1)
    variance = float((m_laws * counts ** 2).sum(1).sub(mean ** 2).sum())
    total, expected = float(m.sum()), float(mean.sum())
    p = _bernstein_p(abs(total - expected), variance, k)
    attempted = float(torch.clamp(m + 1, max=k).sum())
    if p < ALPHA:
        raise PropertyFailed(f"{total:.0f} drafts accepted over {out.shape[0]} rows, expected {expected:.1f} "
                             f"(sd {math.sqrt(variance):.1f}): acceptance rate {total / attempted:.4f} per examined "
                             f"draft; Bernstein p <= {p:.1e} < {ALPHA:.1e}")


def row_pairs_test(pairs: torch.Tensor) -> None:
    """G-test at level ALPHA of the binned scores of adjacent row pairs against the uniform law of their
    SCORE_BINS^4 cells: each row's scores uniform (its law, given its own inputs) and rows independent."""
    cells = SCORE_BINS ** 4
    tolerance.g_test(f"scores of {pairs.numel()} adjacent row pairs (independent U(0, 1) per row)",
                     torch.bincount(pairs, minlength=cells).double(),
                     torch.full((cells,), 1 / cells, dtype=torch.float64), ALPHA)


def emitted_law(impl, case: SpecCase, device: str):
    """Over `trials` rows: each call's layout, the G-test of the emitted sequences (of all rows, and of the single-row
    calls' rows alone: a path taken only for one row must sample too), the accepted counts against their law given the
    drafts, the scores of adjacent row pairs."""
    samples = draw_samples(impl, case, device)
    sequence_test(case, samples.out, samples.drafts, samples.starts)
    single_row_test(case, samples)
    acceptance_test(samples.out, samples.m_laws)
    row_pairs_test(samples.pairs)


def one_hot_target_is_greedy(impl, case: SpecCase, device: str):
    """With one-hot targets (greedy target): drafts equal to the target's token are kept, the first other one is
    replaced by the target's token, all kept -> the target's bonus token. Exactly, in a single-row call and two calls
    of the case's rows."""
    target, _ = _tables(case)
    greedy = target.argmax(1)  # (k + 1,)
    inputs, sampler = _generators(case, device)
    for rows in (1, case.rows, case.rows):
        call = draw_call(case, rows, inputs, sampler, device)
        out = _run(impl, call).cpu()
        draft_tokens = call.args[0].cpu()
        m = (draft_tokens == greedy[:case.k]).long().cumprod(1).sum(1)  # (T,)
        positions = torch.arange(case.k + 1)
        expected = torch.where(positions < m.unsqueeze(1), torch.nn.functional.pad(draft_tokens, (0, 1)), -1)
        expected[torch.arange(rows), m] = greedy[m]
        tolerance.exact("output with one-hot targets", out, expected)


SINGLE_CALL_ROWS = 256  # rows of the one-call properties (the distribution properties use the case's rows)


def _single_call(case: SpecCase, device: str, sampler_seed: int, rows: int = SINGLE_CALL_ROWS) -> Call:
    inputs, _ = _generators(case, device)
    return draw_call(case, min(case.rows, rows), inputs, torch.Generator(device).manual_seed(sampler_seed), device)


def reproducible_with_generator(impl, case: SpecCase, device: str):
    """Two calls on the same inputs with generators in the same state emit the same tokens, with SINGLE_CALL_ROWS
    rows and with one: the generator is the only source of randomness."""
    for rows in (SINGLE_CALL_ROWS, 1):
        call = _single_call(case, device, case.seed, rows)
        again = Call(call.args[:3] + (torch.Generator(device).manual_seed(case.seed),))
        first = _run(impl, call)
        tolerance.exact(f"second call of {call.args[0].shape[0]} rows with the generator reseeded", _run(impl, again),
                        first)


def no_input_mutation(impl, case: SpecCase, device: str):
    """draft_tokens, draft_probs, target_probs and the buffers they view are bitwise unchanged by the call."""
    call = _single_call(case, device, case.seed)
    inputs_unchanged = tolerance.buffers_unchanged_later(
        list(zip(("draft_tokens", "draft_probs", "target_probs"), call.args[:3])))
    _run(impl, call)
    inputs_unchanged()


PROPERTIES = [
    Property("emitted_law", emitted_law, applies=_is_random,
             doc=f"each call's layout; G-test of the emitted sequences against the exact law, a Bernstein test of "
                 f"the accepted drafts against their law given the drafts and a G-test of adjacent rows' scores "
                 f"(independent rows), each at level {ALPHA:.1e}"),
    Property("one_hot_target_is_greedy", one_hot_target_is_greedy, applies=_has_greedy_target,
             doc="one-hot targets: exactly the target's greedy tokens"),
    Property("reproducible_with_generator", reproducible_with_generator,
             doc="same generator state, same output: the generator is the only randomness"),
    Property("no_input_mutation", no_input_mutation, doc="inputs and the buffers they view are unchanged"),
]


# --------------------------------------------------------------------------------------------------- cost


def cost(case: SpecCase, mode: str = "fwd") -> Cost:
    """Per row: reads the k draft tokens and their two probabilities, both V-rows at the decision position (the
    residual needs p and q; the bonus only p), writes k + 1 tokens. FLOPs: ~4 per vocabulary entry (subtract, clamp,
    sum, compare)."""
    size = dtype_of(case.dtype).itemsize
    per_row = 2 * case.V * size + case.k * (8 + 2 * size) + (case.k + 1) * 8
    return Cost(flops=4.0 * case.rows * case.V, bytes=float(case.rows * per_row))


def _bench(V: int, rows: int) -> SpecCase:
    return SpecCase(V, 4, rows, rows, "dense", "float32", "contiguous", 0)


BENCH_CASES = [_bench(V, rows) for V in (32000, 128256, 151936) for rows in (1, 16, 128, 1024)]
QUICK_CASES = [_bench(32000, 16), _bench(32000, 128), SpecCase(1000, 4, 1024, 1024, "dense", "float32", "contiguous")]


# --------------------------------------------------------------------------------------------------- claims


def _claim_tables(V: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random Markov target and draft tables (V, V) with zeros in different places (the draft has mass where the
    target has none)."""
    case = SpecCase(V, 1, 1, 1, "markov", "float64", "padded", seed)
    return _tables(case)


def distribution_gap() -> float:
    """max |speculative law - target law| over the first 4 tokens of Markov chains (V = 3 and 4, three seeds, k = 1
    to 4): float64 enumeration of drafts and acceptance outcomes."""
    worst = 0.0
    for V, seed in ((3, 1), (4, 2), (4, 3)):
        target, draft = _claim_tables(V, seed)
        for k in range(1, 5):
            spec = speculative_law(markov_next(target), markov_next(draft), (0,), 4, k)
            worst = max(worst, law_gap(spec, target_law(markov_next(target), (0,), 4)))
    return worst


def tokens_per_step_gap() -> float:
    """max |exact expected tokens of one step - (1 - alpha^(k+1)) / (1 - alpha)| over alphas and k, with the same
    (p, q) at every position."""
    worst = 0.0
    for seed, k in ((1, 1), (2, 3), (3, 5)):
        target, draft = _claim_tables(5, seed)
        p, q = target[0], draft[0]
        law = step_law(lambda tokens, p=p: p, lambda tokens, q=q: q, (), k)
        worst = max(worst, abs(expected_emitted(law) - expected_tokens_per_step(float(acceptance_rate(p, q)), k)))
    return worst


def claims() -> list[Claim]:
    """The seed's speculative decoding statements (section 2.4 and its list of misconceptions): the output distribution
    is exactly the target's; 2-3x faster. The speedup is read from `python -m llmopt.bench.spec_e2e` results."""
    from llmopt.bench.spec_e2e import speedup_claim

    gap, formula_gap = distribution_gap(), tokens_per_step_gap()
    return [
        Claim("spec_decoding.distribution_identical", "speculative decoding leaves the output distribution exactly "
              "the target's (no quality loss)", "identical", "max |P_spec - P_target|", f"{gap:.1e}",
              "reference/spec_decoding.py: float64 enumeration of drafts, acceptance outcomes and resampled tokens "
              "(speculative_law) vs target-only sampling (target_law), first 4 tokens, Markov tables V = 3, 4, "
              "k = 1..4, drafts with mass where the target has none", "cpu",
              "confirmed" if gap < 1e-12 else "wrong"),
        Claim("spec_decoding.tokens_per_step", "expected tokens per target step (1 - a^(k+1)) / (1 - a), "
              "a = sum min(p, q)", "(1 - a^(k+1)) / (1 - a)", "tokens", f"max gap {formula_gap:.1e}",
              "exact expectation of one step's law (step_law) vs the formula, k = 1, 3, 5", "cpu",
              "confirmed" if formula_gap < 1e-12 else "wrong"),
        speedup_claim(),
    ]


CONTRACT = Contract(
    name="spec_sampler",
    reference=verify_tokens,
    validate=check_spec_call,
    case_type=SpecCase,
    cases=cases,
    make_call=make_call,
    properties=PROPERTIES,
    bench_cases=BENCH_CASES,
    quick_cases=QUICK_CASES,
    cost=cost,
    features=features,
    feature_names=(),
    claims=claims,
    examples=examples,
    examples_budget={"cpu": 2, "interpret": 1, "cuda": 8},
    baseline_impl="torch_batched",
)
