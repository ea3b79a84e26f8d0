"""KV cache (seed 2.1) and GQA/MQA (seed 2.3): a LLaMA-style decoder decoded token by token through a chunk-growing
KV cache against its full causal recompute; the KV memory formula; MHA <-> GQA conversions, mean-pooling as in
Ainslie et al. 2023, "GQA". The contract: cached decode gives the logits of the full recompute."""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import torch
from llmopt.reference import tolerance
from llmopt.reference.attention import attention
from llmopt.reference.contract import WHEN_SET, Call, Claim, Contract, Cost, Property, dtype_of

# --------------------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class DecoderConfig:
    """A LLaMA-style decoder: query head h reads KV head h // (n_heads // n_kv_heads) (MQA: n_kv_heads = 1).
    cache_chunk: the in-house KV cache grows its capacity by this many positions at a time."""

    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    cache_chunk: int = 8


def weight_shapes(config: DecoderConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every weight, named as Hugging Face's LlamaForCausalLM names them."""
    c = config
    shapes = {"model.embed_tokens.weight": (c.vocab_size, c.dim)}
    for i in range(c.n_layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (c.dim,),
            p + "self_attn.q_proj.weight": (c.n_heads * c.head_dim, c.dim),
            p + "self_attn.k_proj.weight": (c.n_kv_heads * c.head_dim, c.dim),
            p + "self_attn.v_proj.weight": (c.n_kv_heads * c.head_dim, c.dim),
            p + "self_attn.o_proj.weight": (c.dim, c.n_heads * c.head_dim),
            p + "post_attention_layernorm.weight": (c.dim,),
            p + "mlp.gate_proj.weight": (c.hidden_dim, c.dim),
            p + "mlp.up_proj.weight": (c.hidden_dim, c.dim),
            p + "mlp.down_proj.weight": (c.dim, c.hidden_dim),
        }
    return shapes | {"model.norm.weight": (c.dim,), "lm_head.weight": (c.vocab_size, c.dim)}


def random_weights(config: DecoderConfig, seed: int, dtype: torch.dtype, device="cpu") -> dict[str, torch.Tensor]:
    """Weights that keep activations O(1): linear maps N(0, 1/fan_in), norms 1 + N(0, 0.1^2), embeddings N(0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in weight_shapes(config).items():
        data = torch.randn(shape, generator=gen, dtype=torch.float64)
        if len(shape) == 1:
            data = 1 + 0.1 * data
        elif "embed_tokens" not in name:
            data = data / shape[1] ** 0.5
        weights[name] = data.to(device=device, dtype=dtype)
    return weights


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) * weight over the last dim; the statistics in float32 for 16-bit x, as kernels do."""
    work = torch.promote_types(x.dtype, torch.float32)
    wide = x.to(work)
    return (wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin (T, head_dim) of rotate-half RoPE at integer positions (T,): angle of pair i is
    position * theta^(-2i / head_dim); computed in float64 for float64, else in float32 (as every kernel does), then
    cast to dtype."""
    work = torch.promote_types(dtype, torch.float32)
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=work, device=positions.device) / head_dim)
    angles = positions.to(work)[:, None] * inv_freq[None, :]  # (T, head_dim / 2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, head_dim)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D) rotated: x cos + rotate_half(x) sin, rotate_half(x) = (-x[D/2:], x[:D/2])."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class KVCache:
    """Keys and values of every layer, (B, Hkv, capacity, head_dim) each. The capacity grows by whole chunks of
    config.cache_chunk positions: a new buffer, the valid positions copied, the spare ones NaN (so a read past the
    valid length shows)."""

    def __init__(self, config: DecoderConfig, batch: int, dtype: torch.dtype, device):
        shape = (batch, config.n_kv_heads, 0, config.head_dim)
        self.chunk = config.cache_chunk
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.lengths = [0] * config.n_layers

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Append k, v (B, Hkv, n, head_dim) to `layer`; returns its valid keys and values
        (B, Hkv, length, head_dim)."""
        start, end = self.lengths[layer], self.lengths[layer] + k.shape[2]
        if end > self.keys[layer].shape[2]:
            capacity = -(-end // self.chunk) * self.chunk
            for buffers in (self.keys, self.values):
                old = buffers[layer]
                grown = torch.full((*old.shape[:2], capacity, old.shape[3]), float("nan"), dtype=old.dtype,
                                   device=old.device)
                grown[:, :, :start] = old[:, :, :start]
                buffers[layer] = grown
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        self.lengths[layer] = end
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def allocated_bytes(self) -> int:
        return sum(t.untyped_storage().nbytes() for t in self.keys + self.values)


def forward_tokens(weights: dict, config: DecoderConfig, tokens: torch.Tensor, start: int, cache=None):
    """Logits (B, n, vocab) of tokens (B, n) at positions start .. start + n - 1. With a cache (anything with
    KVCache's extend), the keys and values of positions < start come from it and those of these tokens are appended;
    without one, start must be 0."""
    c = config
    B, n = tokens.shape
    x = weights["model.embed_tokens.weight"][tokens]  # (B, n, dim)
    positions = torch.arange(start, start + n, device=tokens.device)
    cos, sin = rope_tables(positions, c.head_dim, c.rope_theta, x.dtype)  # (n, head_dim)
    for i in range(c.n_layers):
        w = {name.removeprefix(f"model.layers.{i}."): t for name, t in weights.items()
             if name.startswith(f"model.layers.{i}.")}
        h = rms_norm(x, w["input_layernorm.weight"], c.norm_eps)
        q = (h @ w["self_attn.q_proj.weight"].T).view(B, n, c.n_heads, c.head_dim).transpose(1, 2)  # (B, Hq, n, hd)
        k = (h @ w["self_attn.k_proj.weight"].T).view(B, n, c.n_kv_heads, c.head_dim).transpose(1, 2)  # (B, Hkv, n, hd)
        v = (h @ w["self_attn.v_proj.weight"].T).view(B, n, c.n_kv_heads, c.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.extend(i, k, v)  # (B, Hkv, start + n, hd)
        mixed = attention(q, k, v, causal=True)  # bottom-right: position start + t sees keys 0 .. start + t
        x = x + mixed.transpose(1, 2).reshape(B, n, c.n_heads * c.head_dim) @ w["self_attn.o_proj.weight"].T
        h = rms_norm(x, w["post_attention_layernorm.weight"], c.norm_eps)
        gated = torch.nn.functional.silu(h @ w["mlp.gate_proj.weight"].T) * (h @ w["mlp.up_proj.weight"].T)
        x = x + gated @ w["mlp.down_proj.weight"].T
    return rms_norm(x, weights["model.norm.weight"], c.norm_eps) @ weights["lm_head.weight"].T


def decoder_logits(weights: dict, config: DecoderConfig, tokens: torch.Tensor, *, prompt_len: int | None = None):
    """The full causal recompute: logits (B, T, vocab) of tokens (B, T) int64, every position from scratch.
    prompt_len is accepted (and ignored) so that this has the contract's signature."""
    return forward_tokens(weights, config, tokens, 0, None)


def decode_with_cache(weights: dict, config: DecoderConfig, tokens: torch.Tensor, *, prompt_len: int):
    """Prefill tokens[:, :prompt_len] in one forward, then feed tokens[:, t] one at a time (teacher forcing), each
    step reading the keys and values of earlier positions from a KVCache. Returns (logits (B, T, vocab), cache)."""
    weights_dtype = weights["lm_head.weight"].dtype
    cache = KVCache(config, tokens.shape[0], weights_dtype, tokens.device)
    steps = [forward_tokens(weights, config, tokens[:, :prompt_len], 0, cache)]
    for t in range(prompt_len, tokens.shape[1]):
        steps.append(forward_tokens(weights, config, tokens[:, t:t + 1], t, cache))
    return torch.cat(steps, dim=1), cache


def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, seq_len: int, batch: int, bytes_per_element: int):
    """The seed's formula M_KV = 2 x n_layers x n_kv_heads x head_dim x seq_len x batch x bytes (2: K and V)."""
    return 2 * n_layers * n_kv_heads * head_dim * seq_len * batch * bytes_per_element


# --------------------------------------------------------------------------------------------------- GQA <-> MHA


def _map_kv_projections(weights: dict, config: DecoderConfig, n_kv_heads: int, regroup) -> tuple[dict, DecoderConfig]:
    """The decoder with every k_proj / v_proj weight (Hkv * hd, dim) viewed as (Hkv, hd, dim) and replaced by
    regroup(view) of n_kv_heads heads."""
    mapped = dict(weights)
    for name, weight in weights.items():
        if name.endswith(("self_attn.k_proj.weight", "self_attn.v_proj.weight")):
            heads = weight.view(config.n_kv_heads, config.head_dim, config.dim)  # (Hkv, hd, dim)
            mapped[name] = regroup(heads).reshape(n_kv_heads * config.head_dim, config.dim)
    return mapped, dataclasses.replace(config, n_kv_heads=n_kv_heads)


def repeat_kv_heads(weights: dict, config: DecoderConfig) -> tuple[dict, DecoderConfig]:
    """The MHA decoder (n_kv_heads = n_heads) equal to a GQA one: KV head j repeated for its group of query heads,
    so query head h reads a copy of KV head h // (n_heads // n_kv_heads). Same logits, n_heads / n_kv_heads x the
    cache."""
    group = config.n_heads // config.n_kv_heads
    return _map_kv_projections(weights, config, config.n_heads, lambda heads: heads.repeat_interleave(group, dim=0))


def mean_pool_kv_heads(weights: dict, config: DecoderConfig, n_kv_heads: int) -> tuple[dict, DecoderConfig]:
    """The seed's MHA -> GQA conversion (Ainslie et al. 2023): the K and V projection heads of each group of
    n_heads / n_kv_heads consecutive heads averaged into one (query head h keeps reading group h // group size).
    n_kv_heads = n_heads gives the weights back unchanged; the result is the starting point of uptraining."""
    if n_kv_heads < 1 or config.n_kv_heads % n_kv_heads:
        raise ValueError(f"n_kv_heads = {n_kv_heads} must divide the current {config.n_kv_heads} KV heads")
    if n_kv_heads == config.n_kv_heads:
        return dict(weights), config
    group = config.n_kv_heads // n_kv_heads
    return _map_kv_projections(weights, config, n_kv_heads,
                               lambda heads: heads.view(n_kv_heads, group, *heads.shape[1:]).mean(dim=1))


# --------------------------------------------------------------------------------------------------- the signature


def check_decode_call(call: Call) -> None:
    """ValueError naming the expected layout unless the call is decode(weights, config, tokens, *, prompt_len) with
    config a DecoderConfig (n_heads % n_kv_heads == 0, even head_dim, cache_chunk >= 1), weights exactly
    weight_shapes(config) in one floating dtype on one device, tokens (B, T) int64 in [0, vocab) on that device and
    1 <= prompt_len <= T."""
    if len(call.args) != 3 or set(call.kwargs) != {"prompt_len"}:
        raise ValueError("kv_cache takes (weights, config, tokens, *, prompt_len); got "
                         f"{len(call.args)} positional arguments and keywords {sorted(call.kwargs)}")
    weights, config, tokens = call.args
    if not isinstance(config, DecoderConfig):
        # TRY004: the contract's errors are ValueErrors
        raise ValueError(f"config must be a DecoderConfig, got {type(config).__name__}")  # noqa: TRY004
    if config.n_kv_heads < 1 or config.n_heads % config.n_kv_heads:
        raise ValueError(f"n_heads = {config.n_heads} must be a multiple of n_kv_heads = {config.n_kv_heads}")
    if config.head_dim % 2 or config.cache_chunk < 1:
        raise ValueError(f"head_dim must be even (RoPE pairs) and cache_chunk >= 1, got {config.head_dim}, "
                         f"{config.cache_chunk}")
    expected = weight_shapes(config)
    if not isinstance(weights, dict) or set(weights) != set(expected):
        missing = sorted(set(expected) - set(weights)) if isinstance(weights, dict) else "all"
        raise ValueError(f"weights must be a dict of exactly weight_shapes(config)'s names; missing {missing}")
    dtypes = {t.dtype for t in weights.values()}
    devices = {t.device for t in weights.values()}
    if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point or len(devices) != 1:
        raise ValueError(f"weights must share one floating dtype and one device, got {dtypes} on {devices}")
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise ValueError(f"weight {name} has shape {tuple(weights[name].shape)}, expected {shape}")
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.dtype != torch.int64 or 0 in tokens.shape:
        raise ValueError(f"tokens must be a non-empty (B, T) int64 tensor, got {getattr(tokens, 'shape', tokens)}")
    if tokens.device not in devices:
        raise ValueError(f"tokens are on {tokens.device}, the weights on {devices}")
    if int(tokens.min()) < 0 or int(tokens.max()) >= config.vocab_size:
        raise ValueError(f"token ids must lie in [0, {config.vocab_size})")
    prompt_len = call.kwargs["prompt_len"]
    if not isinstance(prompt_len, int) or not 1 <= prompt_len <= tokens.shape[1]:
        raise ValueError(f"prompt_len must be an int in [1, T = {tokens.shape[1]}], got {prompt_len!r}")


# --------------------------------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class DecodeCase:
    """rope_theta and norm_eps: the config's (LLaMA 3 uses 500000 and 1e-5, LLaMA 2 10000 and 1e-6)."""

    B: int
    prompt_len: int
    T: int  # prompt + generated tokens
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int
    cache_chunk: int
    dtype: str = "float32"
    seed: int = 0
    rope_theta: float = field(default=10000.0, metadata=WHEN_SET)
    norm_eps: float = field(default=1e-5, metadata=WHEN_SET)

    @property
    def config(self) -> DecoderConfig:
        return DecoderConfig(self.vocab_size, self.dim, self.n_layers, self.n_heads, self.n_kv_heads, self.head_dim,
                             self.hidden_dim, self.rope_theta, self.norm_eps, self.cache_chunk)


def features(case: DecodeCase) -> set[str]:
    return {"gqa"} if case.n_heads != case.n_kv_heads else set()


FEATURES = ("gqa",)


def make_call(case: DecodeCase, device: str) -> Call:
    """Random weights (random_weights) in the case's dtype and uniform random tokens."""
    gen = torch.Generator().manual_seed(case.seed + 1)
    tokens = torch.randint(0, case.vocab_size, (case.B, case.T), generator=gen).to(device)
    weights = random_weights(case.config, case.seed, dtype_of(case.dtype), device)
    return Call((weights, case.config, tokens), {"prompt_len": case.prompt_len})


def cases(impl, mode: str):
    """Hypothesis strategy of DecodeCase: tiny decoders, cache chunks of 1-8 positions so that prompt and generation
    cross growth boundaries, MHA/GQA/MQA where the impl supports GQA (groups of 3 too: query head h reads KV head
    h // group, not h >> log2(group)), the config's RoPE theta and norm epsilon of LLaMA 2 and 3."""
    from hypothesis import strategies as st

    supports = impl.supports
    gqa = supports.get("gqa", True) is not False
    dtypes = supports.get("dtypes", ("float64", "float32", "bfloat16"))

    @st.composite
    def build(draw):
        n_kv_heads = draw(st.sampled_from([1, 2]))
        group = draw(st.sampled_from([1, 2, 3, 4] if gqa else [1]))
        T = draw(st.integers(2, 20))
        dims = [dim for dim in (16, 32, 48) if dim % (n_kv_heads * group) == 0]  # as Hugging Face's Llama requires
        return DecodeCase(
            B=draw(st.sampled_from([1, 2])), prompt_len=draw(st.integers(1, T)), T=T,
            vocab_size=draw(st.sampled_from([17, 50])), dim=draw(st.sampled_from(dims)),
            n_layers=draw(st.sampled_from([1, 2])), n_heads=n_kv_heads * group, n_kv_heads=n_kv_heads,
            head_dim=draw(st.sampled_from([4, 8, 16])), hidden_dim=draw(st.sampled_from([24, 64])),
            cache_chunk=draw(st.sampled_from([1, 3, 4, 8])), dtype=draw(st.sampled_from(dtypes)),
            seed=draw(st.integers(0, 2**16)), rope_theta=draw(st.sampled_from([10000.0, 500000.0])),
            norm_eps=draw(st.sampled_from([1e-5, 1e-6])))

    return build().filter(lambda case: CONTRACT.unsupported(case, supports) is None)


# Prompt exactly one chunk (the first decode step grows the cache), one past a chunk, pure decode, pure prefill,
# MQA and GQA over several growths, half precision, GQA groups of 3, a decode past 64 positions (a cache capped at a
# power of two) with LLaMA 3's RoPE theta.
EXAMPLES = [
    DecodeCase(2, 8, 20, 50, 32, 2, 4, 2, 8, 64, cache_chunk=8, dtype="float64", seed=1),
    DecodeCase(1, 5, 17, 17, 48, 2, 4, 1, 16, 64, cache_chunk=4, dtype="float32", seed=2),
    DecodeCase(2, 1, 12, 50, 32, 1, 8, 2, 4, 24, cache_chunk=3, dtype="float64", seed=3),
    DecodeCase(1, 9, 9, 50, 32, 2, 2, 2, 8, 64, cache_chunk=4, dtype="float32", seed=4),
    DecodeCase(2, 4, 16, 50, 32, 2, 4, 1, 8, 64, cache_chunk=4, dtype="bfloat16", seed=5),
    DecodeCase(1, 3, 11, 17, 48, 1, 6, 2, 8, 24, cache_chunk=3, dtype="float32", seed=6),
    DecodeCase(2, 4, 72, 17, 16, 1, 2, 1, 8, 24, cache_chunk=8, dtype="float64", seed=7, rope_theta=500000.0,
               norm_eps=1e-6),
]


def examples(mode: str) -> list[DecodeCase]:
    return EXAMPLES


# --------------------------------------------------------------------------------------------------- the property


def _check_logits(what: str, logits: torch.Tensor, call: Call, dtype: torch.dtype) -> float:
    """Cached decode logits of `call` against its full recompute: the stick in float64, the eager recompute in the
    case's dtype (in float64 the bound is the 16-ulp rounding floor: equal up to rounding)."""
    weights, config, tokens = call.args

    def recompute(work):
        return decoder_logits({n: w.to(work) for n, w in weights.items()}, config, tokens)

    return tolerance.noise_relative(what, logits, recompute(torch.float64), recompute(dtype), dtype,
                                    eager_float32=lambda: recompute(torch.float32))


def _decode(impl, call: Call) -> torch.Tensor:
    check_decode_call(call)
    return impl.fn(*call.args, **call.kwargs)


def matches_reference(impl, case, device):
    call = make_call(case, device)
    return _check_logits("logits", _decode(impl, call), call, dtype_of(case.dtype))


def after_another_call(impl, case, device):
    call = make_call(case, device)
    _, config, tokens = call.args
    other = Call((random_weights(config, case.seed + 1, dtype_of(case.dtype), device), config, tokens), call.kwargs)
    earlier = _decode(impl, other)  # the same tokens, other weights: checked too, as it may meet what an earlier
    _check_logits("logits of the first of two calls", earlier, other, dtype_of(case.dtype))  # property left
    check_earlier = tolerance.unchanged_later(earlier)
    margin = _check_logits("logits after a call with other weights", _decode(impl, call), call, dtype_of(case.dtype))
    check_earlier()
    return margin


def no_input_mutation(impl, case, device):
    call = make_call(case, device)
    weights, _, tokens = call.args
    inputs_unchanged = tolerance.buffers_unchanged_later(
        [*((f"weight {name}", w) for name, w in weights.items()), ("tokens", tokens)])
    impl.fn(*call.args, **call.kwargs)
    inputs_unchanged()


PROPERTIES = [
    Property("matches_reference", matches_reference,
             doc="prefill + cached token-by-token decode gives the logits of the full causal recompute "
                 "(noise-relative, float64 stick)"),
    Property("after_another_call", after_another_call,
             doc="the logits match after a call with other weights and the same tokens (nothing cached from it), "
                 "and that call's logits are left as they were"),
    Property("no_input_mutation", no_input_mutation, doc="the weights and the tokens are unchanged"),
]


# --------------------------------------------------------------------------------------------------- cost


def cost(case: DecodeCase, mode: str = "fwd") -> Cost:
    """Matmul FLOPs of prefill + cached decode (projections, MLP, head, attention over the visible positions); bytes:
    the weights read once per forward (prefill and every decode step), every step's KV cache read, and what is written
    (new K/V, logits)."""
    c, size = case.config, dtype_of(case.dtype).itemsize
    per_token = 2 * c.n_layers * (c.dim * (c.n_heads + 2 * c.n_kv_heads) * c.head_dim + c.n_heads * c.head_dim * c.dim
                                  + 3 * c.dim * c.hidden_dim) + 2 * c.dim * c.vocab_size
    visible_pairs = sum(range(1, case.T + 1))  # position t attends to t + 1 keys, prefill or decode
    flops = case.B * (case.T * per_token + 4 * c.n_layers * c.n_heads * c.head_dim * visible_pairs)
    weight_bytes = sum(torch.Size(s).numel() for s in weight_shapes(c).values()) * size
    forwards = 1 + case.T - case.prompt_len
    cache_reads = sum(kv_cache_bytes(c.n_layers, c.n_kv_heads, c.head_dim, t, case.B, size)
                      for t in range(case.prompt_len, case.T))
    writes = (kv_cache_bytes(c.n_layers, c.n_kv_heads, c.head_dim, case.T, case.B, size)
              + case.B * case.T * c.vocab_size * size)
    return Cost(float(flops), float(forwards * weight_bytes + cache_reads + writes))


# A LLaMA-shaped decoder (32/8 heads of 64, 4 layers): prompt 512, 128 generated tokens.
BENCH_CASES = [DecodeCase(B, 512, 640, 32000, 2048, 4, 32, 8, 64, 5632, cache_chunk=256, dtype="bfloat16")
               for B in (1, 16)]
QUICK_CASES = [DecodeCase(1, 16, 48, 256, 128, 2, 8, 2, 16, 256, cache_chunk=16)]


# --------------------------------------------------------------------------------------------------- claims

GB, GIB = 1e9, 2**30
# LLaMA-3 70B: 80 layers, 8 KV heads of 128, fp16 (seed 2.1); the seed's table of its KV cache (value, unit).
LLAMA3_70B = {"n_layers": 80, "n_kv_heads": 8, "head_dim": 128, "bytes_per_element": 2}
SEED_LLAMA3_70B_TABLE = {(4096, 1): (2.56, "GB"), (4096, 32): (81.9, "GB"), (32768, 1): (20.5, "GB"),
                         (32768, 32): (655.0, "GB"), (131072, 1): (81.9, "GB"), (131072, 32): (2.56, "TB")}
UNITS = {"GB": GB, "TB": 1e12}
BINARY_UNITS = {"GB": GIB, "TB": 2**40}
MIXED_UNITS = {"GB": 2**20 * 1000, "TB": 2**30 * 1000}  # binary mega/giga times a decimal thousand


def hf_dynamic_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, seq_len: int, batch: int,
                           dtype: torch.dtype, device="meta") -> int:
    """Bytes Hugging Face's DynamicCache holds after a prefill of seq_len tokens into every layer (on the meta device
    by default: the library's own bookkeeping and shapes, no memory)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer in range(n_layers):
        keys = torch.empty(batch, n_kv_heads, seq_len, head_dim, dtype=dtype, device=device)
        cache.update(keys, torch.empty_like(keys), layer)
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)


def _table_claims() -> list[Claim]:
    try:
        measured = {cell: hf_dynamic_cache_bytes(**{k: v for k, v in LLAMA3_70B.items() if k != "bytes_per_element"},
                                                 seq_len=cell[0], batch=cell[1], dtype=torch.float16)
                    for cell in SEED_LLAMA3_70B_TABLE}
    except ImportError:
        measured = {}
    ledger = []
    for (seq_len, batch), (seed_value, unit) in SEED_LLAMA3_70B_TABLE.items():
        formula = kv_cache_bytes(**LLAMA3_70B, seq_len=seq_len, batch=batch)
        agrees = measured.get((seq_len, batch)) == formula
        ours = (f"{formula / GB:.4g} GB = {formula / GIB:.4g} GiB ({formula} bytes): the seed's figure is "
                f"{seed_value * UNITS[unit] / formula:.2f}x ours in decimal units and "
                f"{seed_value * BINARY_UNITS[unit] / formula:.2f}x read as binary ones; it equals 2 x ours over "
                f"2^{20 if unit == 'GB' else 30} x 1000 bytes per {unit} ({2 * formula / MIXED_UNITS[unit]:.4g}): "
                "K and V counted twice and a mixed binary/decimal unit")
        ledger.append(Claim(
            f"kv_cache.llama3_70b.seq{seq_len}.batch{batch}",
            f"LLaMA-3 70B KV cache (80 layers, 8 KV heads x 128, fp16) at seq_len {seq_len}, batch {batch}",
            f"{seed_value:g} {unit}", unit, ours,
            "2 x 80 x 8 x 128 x seq x batch x 2 bytes"
            + (", equal to the bytes HF DynamicCache holds after that prefill (meta device)" if agrees else ""),
            "cpu", "wrong" if abs(seed_value * UNITS[unit] - formula) > 0.01 * formula else "confirmed"))
    return ledger


def _allocation_claim() -> Claim:
    """The formula against bytes actually allocated: HF LlamaForCausalLM's DynamicCache after a real prefill + decode
    on CPU, and the in-house chunked cache (which holds the formula at its capacity, a whole number of chunks)."""
    case = DecodeCase(2, 5, 13, 50, 32, 3, 4, 2, 8, 64, cache_chunk=4, dtype="float32", seed=9)
    weights, config, tokens = make_call(case, "cpu").args
    _, cache = decode_with_cache(weights, config, tokens, prompt_len=case.prompt_len)
    capacity = -(-case.T // case.cache_chunk) * case.cache_chunk
    ours = kv_cache_bytes(case.n_layers, case.n_kv_heads, case.head_dim, capacity, case.B, 4)
    checks = [f"in-house cache {cache.allocated_bytes()} B allocated = formula at capacity {capacity}: {ours} B"]
    agree = cache.allocated_bytes() == ours
    try:
        from llmopt.impls.kv_cache.hf_llama import hf_decode

        _, hf_cache = hf_decode(weights, config, tokens, prompt_len=case.prompt_len)
        held = sum(layer.keys.untyped_storage().nbytes() + layer.values.untyped_storage().nbytes()
                   for layer in hf_cache.layers)
        formula = kv_cache_bytes(case.n_layers, case.n_kv_heads, case.head_dim, case.T, case.B, 4)
        checks.append(f"HF DynamicCache {held} B after {case.T} tokens = formula {formula} B")
        agree &= held == formula
    except ImportError as missing:
        checks.append(f"HF DynamicCache not measured ({missing})")
    return Claim("kv_cache.memory_formula", "KV cache memory = 2 x n_layers x n_kv_heads x d_head x seq_len x batch "
                 "x bytes", "formula", "bytes", "; ".join(checks), "storage bytes of every cache tensor after prefill "
                 f"{case.prompt_len} + decode to {case.T} tokens, batch {case.B}, 3 layers, 2 KV heads x 8, fp32",
                 "cpu", "confirmed" if agree else "wrong")


def _gqa_claims() -> list[Claim]:
    """Measured cache bytes of a GQA/MQA decoder against the MHA decoder with the same logits (repeat_kv_heads)."""
    ledger = []
    for n_kv_heads, name, seed_value in ((2, "gqa", "g/h"), (1, "mqa", "1/h")):
        case = DecodeCase(1, 6, 14, 50, 32, 2, 8, n_kv_heads, 4, 64, cache_chunk=4, dtype="float64", seed=21)
        weights, config, tokens = make_call(case, "cpu").args
        logits, cache = decode_with_cache(weights, config, tokens, prompt_len=case.prompt_len)
        mha_logits, mha_cache = decode_with_cache(*repeat_kv_heads(weights, config), tokens, prompt_len=case.prompt_len)
        ratio = cache.allocated_bytes() / mha_cache.allocated_bytes()
        gap = float((logits - mha_logits).abs().max())
        ledger.append(Claim(
            f"kv_cache.{name}.cache_fraction", f"{name.upper()} KV cache relative to MHA (h = 8 query heads, "
            f"{n_kv_heads} KV heads)", seed_value, "fraction", f"{ratio:g} = {n_kv_heads}/8 (measured bytes), same "
            f"logits as the MHA model within {gap:.1e} (float64)", "in-house cache bytes of the GQA decoder vs "
            "repeat_kv_heads (MHA with each KV head copied to its query heads), same tokens", "cpu",
            "confirmed" if ratio == n_kv_heads / 8 and gap < 1e-12 else "wrong"))
    return ledger


@functools.cache  # pure of the installed libraries: computed once a process
def claims() -> tuple[Claim, ...]:
    """The seed's KV cache (2.1) and GQA/MQA (2.3) statements."""
    T = 1000
    redundant = T * (T - 1) // 2
    return tuple(_table_claims() + [_allocation_claim()] + _gqa_claims() + [
        Claim("kv_cache.no_cache_redundant_kv", "without a KV cache, generating 1000 tokens recomputes ~500,000 K/V",
              "~500,000", "K/V rows per layer", f"{redundant:,} (step t recomputes the t - 1 earlier positions)",
              "sum over t = 1..1000 of (t - 1) = T(T - 1)/2", "cpu", "confirmed"),
        Claim("kv_cache.gqa.uptraining", "an MHA model mean-pooled to GQA recovers its quality with ~5% of the "
              "original pre-training compute", "~5%", "% of pre-training", None, "needs pre-training runs; "
              "mean_pool_kv_heads gives the conversion itself", "-", "not checkable here"),
    ])


CONTRACT = Contract(
    name="kv_cache",
    reference=decoder_logits,
    validate=check_decode_call,
    case_type=DecodeCase,
    cases=cases,
    make_call=make_call,
    properties=PROPERTIES,
    bench_cases=BENCH_CASES,
    quick_cases=QUICK_CASES,
    cost=cost,
    features=features,
    feature_names=FEATURES,
    claims=claims,
    examples=examples,
    max_bench_cpu_flops=5e9,
)
