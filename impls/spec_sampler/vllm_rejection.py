"""Registered impl: vLLM 0.26.0's rejection sampler, `rejection_sample` of vllm/v1/sample/rejection_sampler.py (Triton
kernels: the accept/reject walk per request, the recovered token per position as argmax max(0, p - q) / Exp(1)), fed
the contract's tensors in vLLM's flattened spec-decode layout. vLLM takes target logits (log p here) and bonus tokens
sampled outside it (from target_probs[:, k] here, the way its Sampler's random_sample draws them: p / Exp(1) noise and
an argmax, no host synchronization; out of place, since vLLM divides its own probabilities in place)."""
from llmopt.impls import register


def _available() -> str | None:
    try:
        import vllm.v1.sample.rejection_sampler  # noqa: F401
    except Exception as error:  # noqa: BLE001 - any import failure makes the impl unavailable, with its cause
        return f"vllm.v1.sample.rejection_sampler does not import: {type(error).__name__}: {error}"
    return None


def _plan(draft_tokens, draft_probs, target_probs):
    """vLLM's inputs, built once: draft ids (T k,) int32, cu_num_draft_tokens (T,) int32, contiguous draft probs
    (T k, V) and target logits log p (T k, V) float32, every request random at temperature 1 with no top-k/top-p and no
    per-request generator. -> run(): bonus tokens from target_probs[:, k], then rejection_sample; (T, k + 1) int32 with
    -1 after the emitted tokens, drawn from torch's default generators. (Until 2026-12-04 the bonus came from
    torch.multinomial, which synchronizes with the host: the H200 rows of that day include it.)"""
    import torch
    from vllm.v1.sample.logits_processor import LogitsProcessors
    from vllm.v1.sample.metadata import SamplingMetadata
    from vllm.v1.sample.rejection_sampler import rejection_sample

    T, k = draft_tokens.shape
    V = target_probs.shape[2]
    device = draft_tokens.device
    draft_ids = draft_tokens.reshape(T * k).to(torch.int32)  # (T k,) request-major, as vLLM flattens them
    cu_num_draft_tokens = torch.arange(1, T + 1, dtype=torch.int32, device=device) * k  # (T,)
    flat_draft_probs = draft_probs.reshape(T * k, V).contiguous()  # (T k, V)
    target_logits = target_probs[:, :k].reshape(T * k, V).log()  # (T k, V): vLLM softmaxes them back to p
    bonus_probs = target_probs[:, k]  # (T, V)
    no_penalty = torch.zeros(T, dtype=torch.float32, device=device)
    metadata = SamplingMetadata(
        temperature=torch.ones(T, dtype=torch.float32, device=device), all_greedy=False, all_random=True,
        top_p=None, top_k=None, generators={}, max_num_logprobs=None, no_penalties=True, prompt_token_ids=None,
        frequency_penalties=no_penalty, presence_penalties=no_penalty, repetition_penalties=no_penalty + 1,
        output_token_ids=[[] for _ in range(T)], allowed_token_ids_mask=None, bad_words_token_ids={},
        logitsprocs=LogitsProcessors())

    def run():
        noise = torch.empty_like(bonus_probs).exponential_()  # (T, V)
        bonus = (bonus_probs / noise).argmax(dim=-1).view(T, 1).to(torch.int32)  # (T, 1), vLLM's random_sample
        return rejection_sample(draft_ids, [k] * T, k, cu_num_draft_tokens, flat_draft_probs, target_logits, bonus,
                                metadata)

    return run


def prepare(draft_tokens, draft_probs, target_probs, generator):
    """(run, to_contract) for benchmarks: run() is vLLM's production path, unseeded (torch's default CUDA generator,
    one torch.rand and one exponential_ per call); the layout conversion happens here, outside the timing."""
    return _plan(draft_tokens, draft_probs, target_probs), lambda out: out.long()


def _equal_drafts(case) -> str | None:
    """vLLM takes the target as logits: softmax(log p) is p only up to float32 rounding, so a draft equal to the
    target is rejected with probability ~1e-7 per position, an outcome of probability 0 in that case's exact law."""
    return "target given as logits: a draft equal to the target is not exactly equal after softmax" \
        if getattr(case, "family", None) == "equal" else None


@register("spec_sampler", "vllm_rejection", kind="library", devices=("cuda",), requires=("vllm",),
          available=_available, prepare=prepare, supports={"dtypes": ("float32",), "check": _equal_drafts})
def vllm_rejection(draft_tokens, draft_probs, target_probs, generator):
    """vLLM draws from torch's default generators; a seed drawn from `generator` seeds them inside fork_rng, so the
    output is a function of `generator`'s state and the caller's default generators are left as they were."""
    import torch

    run = _plan(draft_tokens, draft_probs, target_probs)
    seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
    with torch.random.fork_rng(devices=[draft_tokens.device] if draft_tokens.device.type == "cuda" else []):
        torch.manual_seed(seed)
        return run().long()
