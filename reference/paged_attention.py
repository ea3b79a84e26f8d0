"""PagedAttention (seed 2.2; Kwon et al. 2023, "Efficient Memory Management for LLM Serving with PagedAttention"):
a block manager (append, free, fork with copy-on-write, shared prefix blocks), decode attention over a paged KV cache
(GQA/MQA) as a contract, and the memory waste of contiguous max-length preallocation against paged allocation."""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import torch
from llmopt.reference import tolerance
from llmopt.reference.attention import attention
from llmopt.reference.contract import (
    WHEN_SET,
    Call,
    Claim,
    Contract,
    Cost,
    Goal,
    Property,
    PropertyFailed,
    drawing,
    dtype_of,
)

# --------------------------------------------------------------------------------------------------- block manager


class OutOfBlocks(RuntimeError):
    """No free physical block is left."""


class BlockManager:
    """Physical blocks of `block_size` token slots, handed out from a free list (in `order`, default 0, 1, ...) and
    reference-counted. Each sequence has a block table (logical block i -> physical block) and a length; token t of a
    sequence lives in slot t % block_size of physical block table[t // block_size]. The manager moves no data: append
    returns where new tokens go and which blocks to copy first (copy-on-write)."""

    def __init__(self, num_blocks: int, block_size: int, order=None):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got {num_blocks}, {block_size}")
        order = list(range(num_blocks)) if order is None else [int(b) for b in order]
        if sorted(order) != list(range(num_blocks)):
            raise ValueError(f"order must be a permutation of range({num_blocks})")
        self.block_size = block_size
        self.free_blocks = deque(order)
        self.refcount = [0] * num_blocks
        self.tables: dict = {}
        self.lengths: dict = {}

    @property
    def num_free(self) -> int:
        return len(self.free_blocks)

    def add(self, seq) -> None:
        """A new, empty sequence."""
        if seq in self.tables:
            raise ValueError(f"sequence {seq!r} already exists")
        self.tables[seq], self.lengths[seq] = [], 0

    def _take(self) -> int:
        if not self.free_blocks:
            raise OutOfBlocks(f"all {len(self.refcount)} blocks are in use")
        block = self.free_blocks.popleft()
        self.refcount[block] = 1
        return block

    def _release(self, block: int) -> None:
        self.refcount[block] -= 1
        if self.refcount[block] == 0:
            self.free_blocks.append(block)

    def append(self, seq, n: int = 1):
        """Room for n more tokens of `seq`, allocating a block whenever the last one is full. Returns (copies, runs):
        copies [(source, target)] to make before writing (copy-on-write: the last block was shared and not full, so
        `seq` gets its own copy); runs [(block, first slot, end slot)] that the n new tokens fill, in order."""
        table, copies, runs = self.tables[seq], [], []
        while n > 0:
            offset = self.lengths[seq] % self.block_size
            if offset == 0:
                table.append(self._take())
            elif self.refcount[table[-1]] > 1:
                shared = table[-1]
                table[-1] = self._take()
                copies.append((shared, table[-1]))
                self._release(shared)
            count = min(n, self.block_size - offset)
            runs.append((table[-1], offset, offset + count))
            self.lengths[seq] += count
            n -= count
        return copies, runs

    def fork(self, parent, child) -> None:
        """`child` starts as `parent`: the same blocks, shared (reference counts up), copied only when written."""
        self.add(child)
        self.tables[child] = list(self.tables[parent])
        self.lengths[child] = self.lengths[parent]
        for block in self.tables[child]:
            self.refcount[block] += 1

    def share_prefix(self, source, seq, num_tokens: int) -> int:
        """A new sequence `seq` starting with the full blocks that hold `source`'s first num_tokens tokens (prefix
        caching: a partial block is never shared this way). Returns the tokens shared, a multiple of block_size."""
        full = min(num_tokens, self.lengths[source]) // self.block_size
        self.add(seq)
        self.tables[seq] = self.tables[source][:full]
        self.lengths[seq] = full * self.block_size
        for block in self.tables[seq]:
            self.refcount[block] += 1
        return self.lengths[seq]

    def free(self, seq) -> None:
        """Drop `seq`; its blocks that no other sequence holds go back to the free list."""
        for block in self.tables.pop(seq):
            self._release(block)
        del self.lengths[seq]

    def block_table(self, seq) -> list[int]:
        return list(self.tables[seq])


class PagedKVCache:
    """K and V (num_blocks, block_size, Hkv, D) written through a BlockManager (one per cache)."""

    def __init__(self, manager: BlockManager, k: torch.Tensor, v: torch.Tensor):
        if k.shape != v.shape or k.shape[:2] != (len(manager.refcount), manager.block_size):
            raise ValueError(f"k and v must be (num_blocks = {len(manager.refcount)}, block_size = "
                             f"{manager.block_size}, Hkv, D); got {tuple(k.shape)}, {tuple(v.shape)}")
        self.manager, self.k, self.v = manager, k, v

    def append(self, seq, k: torch.Tensor, v: torch.Tensor) -> None:
        """Append tokens k, v (n, Hkv, D) to `seq`: copy-on-write copies first, then one scattered write."""
        copies, runs = self.manager.append(seq, k.shape[0])
        for source, target in copies:
            self.k[target], self.v[target] = self.k[source], self.v[source]
        slots = _flat_slots(runs, self.manager.block_size, k.device)  # (n,)
        self.k.view(-1, *self.k.shape[2:])[slots] = k
        self.v.view(-1, *self.v.shape[2:])[slots] = v

    def gather(self, seq) -> tuple[torch.Tensor, torch.Tensor]:
        """The logical K and V (L, Hkv, D) of `seq`."""
        table = torch.tensor(self.manager.tables[seq], dtype=torch.int64, device=self.k.device)
        length = self.manager.lengths[seq]
        return gather_sequence(self.k, table, length), gather_sequence(self.v, table, length)


def _flat_slots(runs, block_size: int, device) -> torch.Tensor:
    """Flat slot indices block * block_size + slot of every token of `runs` [(block, first, end)], in order."""
    starts = torch.tensor([block * block_size + first for block, first, _ in runs], dtype=torch.int64)
    counts = torch.tensor([end - first for _, first, end in runs], dtype=torch.int64)
    run_offsets = torch.cumsum(counts, 0) - counts  # (runs,) first token of each run
    within = torch.arange(int(counts.sum())) - torch.repeat_interleave(run_offsets, counts)
    return (torch.repeat_interleave(starts, counts) + within).to(device)


def gather_sequence(cache: torch.Tensor, table_row: torch.Tensor, length: int) -> torch.Tensor:
    """The first `length` tokens (length, Hkv, D) of a sequence whose block table row is `table_row`, from cache
    (num_blocks, block_size, Hkv, D); reads only the ceil(length / block_size) blocks it needs."""
    used = table_row[: -(-length // cache.shape[1])].long()
    return cache[used].flatten(0, 1)[:length]


# --------------------------------------------------------------------------------------------------- the reference


def paged_attention(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    """Decode attention over a paged KV cache. q (B, Hq, D); k_cache, v_cache (num_blocks, block_size, Hkv, D);
    block_table (B, max_blocks) int32; seq_lens (B,) int32, each >= 1 -> out (B, Hq, D) in q's dtype. Sequence b
    attends to its seq_lens[b] tokens, token t in slot t % block_size of block block_table[b, t // block_size]; query
    head h reads KV head h // (Hq // Hkv); entries of a row past the sequence's last block are never read."""
    outputs = []
    for b in range(q.shape[0]):
        length = int(seq_lens[b])
        k = gather_sequence(k_cache, block_table[b], length).transpose(0, 1)  # (Hkv, L, D)
        v = gather_sequence(v_cache, block_table[b], length).transpose(0, 1)
        outputs.append(attention(q[b, :, None][None], k[None], v[None], scale=scale)[0, :, 0])  # (Hq, D)
    return torch.stack(outputs)  # (B, Hq, D)


# --------------------------------------------------------------------------------------------------- the signature


def check_paged_call(call: Call) -> None:
    """ValueError naming the expected layout unless the call is paged_attn(q, k_cache, v_cache, block_table, seq_lens,
    *, scale) as paged_attention documents: one floating dtype and one device, Hq % Hkv == 0, every length in
    [1, max_blocks x block_size], every table entry a sequence uses in [0, num_blocks)."""
    layout = ("q (B, Hq, D), k_cache and v_cache (num_blocks, block_size, Hkv, D), block_table (B, max_blocks) int32, "
              "seq_lens (B,) int32")
    if len(call.args) != 5 or set(call.kwargs) - {"scale"}:
        raise ValueError(f"paged_attention takes (q, k_cache, v_cache, block_table, seq_lens, *, scale): {layout}; "
                         f"got {len(call.args)} positional arguments and keywords {sorted(call.kwargs)}")
    q, k_cache, v_cache, block_table, seq_lens = call.args
    for name, t, dims in (("q", q, 3), ("k_cache", k_cache, 4), ("v_cache", v_cache, 4),
                          ("block_table", block_table, 2), ("seq_lens", seq_lens, 1)):
        if not isinstance(t, torch.Tensor) or t.dim() != dims or 0 in t.shape:
            raise ValueError(f"{name} must be a non-empty {dims}-D tensor: expected {layout}; "
                             f"got {getattr(t, 'shape', type(t))}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device}, q on {q.device}: one device expected")
    if not q.is_floating_point() or not q.dtype == k_cache.dtype == v_cache.dtype:
        raise ValueError(f"q, k_cache, v_cache must share a floating dtype, got {q.dtype}, {k_cache.dtype}, "
                         f"{v_cache.dtype}")
    if block_table.dtype != torch.int32 or seq_lens.dtype != torch.int32:
        raise ValueError(f"block_table and seq_lens must be int32, got {block_table.dtype}, {seq_lens.dtype}")
    B, Hq, D = q.shape
    num_blocks, block_size, Hkv, Dk = k_cache.shape
    if v_cache.shape != k_cache.shape or Dk != D or Hq % Hkv:
        raise ValueError(f"expected {layout} with Hq % Hkv == 0 and one D; got q {tuple(q.shape)}, "
                         f"k_cache {tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)}")
    if block_table.shape[0] != B or seq_lens.shape[0] != B:
        raise ValueError(f"block_table and seq_lens need B = {B} rows, got {tuple(block_table.shape)}, "
                         f"{tuple(seq_lens.shape)}")
    lengths = seq_lens.long().cpu()
    if int(lengths.min()) < 1:
        raise ValueError(f"every sequence length must be >= 1 (a decode step attends to at least its own token), "
                         f"got {lengths.tolist()}")
    if int(lengths.max()) > block_table.shape[1] * block_size:
        raise ValueError(f"a length exceeds the table: max_blocks {block_table.shape[1]} x block_size {block_size} "
                         f"< {int(lengths.max())}")
    used = torch.arange(block_table.shape[1]) < (-(-lengths // block_size))[:, None]  # (B, max_blocks)
    entries = block_table.cpu().long()[used]
    if int(entries.min()) < 0 or int(entries.max()) >= num_blocks:
        raise ValueError(f"block_table entries a sequence uses must lie in [0, num_blocks = {num_blocks})")
    scale = call.kwargs.get("scale")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale >= 0):
        # as attention's: fused kernels take the row max of the unscaled scores, the row min under a negative scale
        raise ValueError(f"scale must be a finite number >= 0 or None (D ** -0.5), got {scale!r}")


# --------------------------------------------------------------------------------------------------- the cases

SPARE_BLOCKS = 2  # blocks no sequence references, in every case (poisoned by unused_slots_never_read)
TABLE_SLACK = 1  # block table columns past the longest sequence's last block
NO_BLOCK = 2**31 - 1  # what unused_slots_never_read writes in the table past each sequence's last block
LAYOUTS = ("contiguous", "views")
KEY_OFFSET = 200.0  # the stress cases' key_offset: scores shift by ~200 (float32 exp overflows past 88)


@dataclass(frozen=True)
class PagedCase:
    """Sequence b holds lengths[b % len(lengths)] tokens; with shared_prefix > 0 every sequence was forked from one
    parent after its first shared_prefix tokens (full blocks shared, the partial one copied on write: siblings that
    never wrote past it keep sharing it). key_offset > 0 gives every key of a KV head a common component (as real keys
    carry a large channel mean), shifting all scores of a query head by one amount, key_offset times a standard normal:
    softmax ignores it, a kernel whose running max is missing or starts at 0 overflows or underflows. layout "views"
    passes every tensor as a strided view, as serving engines do (see as_views)."""

    B: int
    Hq: int
    Hkv: int
    D: int
    block_size: int
    lengths: tuple
    shared_prefix: int = 0
    scale: float | None = None
    dtype: str = "float32"
    value_scale: float = 1.0
    seed: int = 0
    key_offset: float = field(default=0.0, metadata=WHEN_SET)
    layout: str = field(default="contiguous", metadata=WHEN_SET)

    def __post_init__(self):
        if not self.lengths or min(self.lengths) < 1 or not 0 <= self.shared_prefix <= min(self.lengths):
            raise ValueError(f"lengths must be >= 1 and shared_prefix in [0, min(lengths)], got {self.lengths}, "
                             f"{self.shared_prefix}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")

    @property
    def seq_lens(self) -> tuple[int, ...]:
        return tuple(self.lengths[b % len(self.lengths)] for b in range(self.B))


def features(case: PagedCase) -> set[str]:
    needs = set()
    if case.Hq != case.Hkv:
        needs.add("gqa")
    if case.scale is not None:
        needs.add("scale")
    if case.shared_prefix:
        needs.add("shared_blocks")
    return needs


FEATURES = ("gqa", "scale", "shared_blocks")


def _generator(case: PagedCase, device: str, offset: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(case.seed * 7919 + offset)


def logical_query(case: PagedCase, device: str) -> torch.Tensor:
    """q (B, Hq, D): standard normal x value_scale in the case's dtype, generated on `device`."""
    return torch.randn(case.B, case.Hq, case.D, generator=_generator(case, device, 0), device=device,
                       dtype=dtype_of(case.dtype)) * case.value_scale


def key_offsets(case: PagedCase, device: str) -> torch.Tensor:
    """(Hkv, D) in float32: the component every key of KV head j shares, key_offset / (scale x value_scale) along a
    random unit vector u_j, so that query head h's scores all shift by key_offset x (q_h . u_j) / value_scale, a
    standard normal times key_offset."""
    scale = case.scale if case.scale is not None else case.D**-0.5
    directions = torch.randn(case.Hkv, case.D, generator=_generator(case, device, 1_000_006), device=device)
    if scale == 0:  # every score is 0 whatever the keys hold
        return torch.zeros_like(directions)
    return directions / directions.norm(dim=1, keepdim=True) * (case.key_offset / (scale * case.value_scale))


def logical_sequence(case: PagedCase, b: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence b's K and V (L_b, Hkv, D), standard normal (K plus key_offsets) in the case's dtype, generated on
    `device` one sequence at a time (bench-sized caches never exist twice); the first shared_prefix tokens are the same
    for every sequence."""
    def normal(length, offset):
        return torch.randn(length, case.Hkv, case.D, generator=_generator(case, device, offset), device=device,
                           dtype=dtype_of(case.dtype))

    own = case.seq_lens[b] - case.shared_prefix
    k, v = (torch.cat([normal(case.shared_prefix, 1 + i), normal(own, 3 + 2 * b + i)]) for i in range(2))
    if case.key_offset:
        wide = torch.promote_types(k.dtype, torch.float32)
        k = (k.to(wide) + key_offsets(case, device).to(wide)).to(k.dtype)
    return k, v


def paged_layout(case: PagedCase, device: str):
    """k_cache, v_cache, block_table, seq_lens holding the case's logical sequences, written through a BlockManager
    whose free list is a random permutation: every sequence forked from one parent after shared_prefix tokens, or in
    its own blocks when shared_prefix is 0. Slots no sequence uses hold finite garbage (normal x 4); table entries past
    a sequence's last block name unreferenced blocks."""
    bs, lengths = case.block_size, case.seq_lens
    num_blocks = -(-case.shared_prefix // bs) + sum(-(-L // bs) for L in lengths) + SPARE_BLOCKS
    order = torch.randperm(num_blocks, generator=_generator(case, "cpu", 1_000_003))
    manager = BlockManager(num_blocks, bs, order.tolist())
    garbage = [torch.randn(num_blocks, bs, case.Hkv, case.D, generator=_generator(case, device, 1_000_004 + i),
                           device=device, dtype=dtype_of(case.dtype)).mul_(4) for i in range(2)]
    cache = PagedKVCache(manager, *garbage)
    if case.shared_prefix:
        manager.add("parent")
        cache.append("parent", *(t[:case.shared_prefix] for t in logical_sequence(case, 0, device)))
        for b in range(case.B):
            manager.fork("parent", b)
            cache.append(b, *(t[case.shared_prefix:] for t in logical_sequence(case, b, device)))
        manager.free("parent")
    else:
        for b in range(case.B):
            manager.add(b)
            cache.append(b, *logical_sequence(case, b, device))
    width = max(len(manager.tables[b]) for b in range(case.B)) + TABLE_SLACK
    unreferenced = torch.tensor(list(manager.free_blocks), dtype=torch.int32)
    filler = unreferenced[torch.randint(len(unreferenced), (case.B, width), generator=_generator(case, "cpu", 5))]
    for b in range(case.B):
        filler[b, :len(manager.tables[b])] = torch.tensor(manager.tables[b], dtype=torch.int32)
    seq_lens = torch.tensor(lengths, dtype=torch.int32)
    return cache.k, cache.v, filler.to(device), seq_lens.to(device)


def as_views(call: Call) -> Call:
    """The same call with every tensor a strided view, as a serving engine passes them: q the query columns of a fused
    (B, (Hq + 2 Hkv) D) qkv projection, k_cache and v_cache the halves of one (num_blocks, 2, block_size, Hkv, D)
    buffer, block_table the first columns of a table twice as wide, seq_lens every other entry of a longer vector."""
    q, k_cache, v_cache, block_table, seq_lens = call.args
    B, Hq, D = q.shape
    qkv = torch.full((B, Hq * D + 2 * k_cache.shape[2] * D), float("nan"), dtype=q.dtype, device=q.device)
    qkv[:, :Hq * D] = q.flatten(1)
    kv = torch.stack([k_cache, v_cache], dim=1)  # (num_blocks, 2, block_size, Hkv, D)
    table = torch.full((B, 2 * block_table.shape[1]), -1, dtype=block_table.dtype, device=block_table.device)
    table[:, :block_table.shape[1]] = block_table
    lens = torch.zeros(2 * B, dtype=seq_lens.dtype, device=seq_lens.device)
    lens[::2] = seq_lens
    return Call((qkv[:, :Hq * D].view(B, Hq, D), kv[:, 0], kv[:, 1], table[:, :block_table.shape[1]], lens[::2]),
                call.kwargs)


def make_call(case: PagedCase, device: str) -> Call:
    """The case's query and its logical sequences laid out in blocks as paged_layout does (as strided views under
    layout "views")."""
    call = Call((logical_query(case, device), *paged_layout(case, device)), {"scale": case.scale})
    return as_views(call) if case.layout == "views" else call


def cases(impl, mode: str):
    """Hypothesis strategy of PagedCase: lengths at, one before and one past block boundaries (and 1), shared prefixes,
    GQA/MQA (groups of 3 too), several block sizes, keys with a large common offset, strided views; only what the impl
    supports ("interpret": tiny, no bfloat16)."""
    from hypothesis import strategies as st

    on, _, dtypes = drawing(impl, mode, ("float32", "float16", "bfloat16", "float64"))
    block_sizes = {"interpret": [4, 8, 16], "cpu": [1, 3, 4, 8, 16, 32], "cuda": [8, 16, 32, 64, 128, 256]}[mode]
    head_dims = {"interpret": [16, 32], "cpu": [8, 16, 40, 64, 128], "cuda": [64, 128, 256]}[mode]
    most_tokens = {"interpret": 80, "cpu": 640, "cuda": 8192}[mode]

    @st.composite
    def build(draw):
        bs = draw(st.sampled_from(block_sizes))

        def length():
            blocks = draw(st.integers(0, max(1, most_tokens // bs)))
            return max(1, blocks * bs + draw(st.sampled_from([0, 0, 1, -1, bs // 2])))

        Hkv = draw(st.sampled_from([1, 2]))
        B = draw(st.sampled_from([1, 2, 3]))
        lengths = tuple(length() for _ in range(draw(st.integers(1, B))))  # fewer than B: equal lengths recur
        prefix = draw(st.sampled_from([0, bs, bs + 1, min(lengths)])) if on("shared_blocks") else 0
        return PagedCase(
            B=B, Hq=Hkv * draw(st.sampled_from([1, 2, 3, 4, 8] if on("gqa") else [1])), Hkv=Hkv,
            D=draw(st.sampled_from(head_dims)), block_size=bs, lengths=lengths,
            shared_prefix=min(prefix, min(lengths)),
            scale=draw(st.sampled_from([None, None, 0.05, 0.3, 0.0])) if on("scale") else None,  # 0: mean of v
            dtype=draw(st.sampled_from(dtypes)), value_scale=draw(st.sampled_from([1.0, 1.0, 8.0, 0.1])),
            seed=draw(st.integers(0, 2**16)), key_offset=draw(st.sampled_from([0.0, 0.0, 0.0, KEY_OFFSET])),
            layout=draw(st.sampled_from(["contiguous", "views"])))

    return build().filter(lambda case: CONTRACT.unsupported(case, impl.supports) is None)


# The regression grid: lengths exactly at, one past and one before block boundaries, a single token, forks whose
# children copy a partial block on write (or, never writing past it, all keep sharing it), GQA 8:1 and 3:1, MHA, MQA,
# half precision, keys with a large common offset, an explicit scale of 0, strided views of every input.
EXAMPLES = [
    PagedCase(3, 8, 2, 32, 16, (32, 33, 1), seed=1),
    PagedCase(3, 4, 1, 16, 8, (24, 17, 13), shared_prefix=13, dtype="float16", seed=2),
    PagedCase(2, 4, 4, 64, 16, (47, 16), shared_prefix=16, seed=3),
    PagedCase(2, 8, 1, 32, 4, (64, 65), dtype="float64", seed=4),
    PagedCase(1, 2, 2, 16, 16, (1,), seed=5),
    PagedCase(3, 16, 2, 128, 16, (300, 257, 112), shared_prefix=100, dtype="bfloat16", seed=6),
    PagedCase(2, 6, 3, 40, 3, (31, 30), scale=0.3, value_scale=8.0, seed=7),
    PagedCase(2, 6, 2, 16, 4, (6,), shared_prefix=6, seed=8, key_offset=KEY_OFFSET),
    PagedCase(2, 4, 2, 32, 8, (19, 8), scale=0.0, seed=9),  # every visible slot weighs alike: the mean of v
    PagedCase(3, 6, 2, 16, 16, (33, 16, 1), seed=10, layout="views"),  # q, caches, table and lengths as strided views
]


def examples(mode: str) -> list[PagedCase]:
    """The grid; under Triton's interpreter its cases of at most 80 tokens a sequence and no bfloat16; on CUDA the
    cases whose block size is a multiple of 16 (what the libraries take)."""
    if mode == "interpret":
        return [c for c in EXAMPLES if max(c.lengths) <= 80 and c.dtype != "bfloat16" and c.D <= 32]
    if mode == "cuda":
        return [c for c in EXAMPLES if c.block_size % 16 == 0]
    return EXAMPLES


# --------------------------------------------------------------------------------------------------- the properties


def contiguous_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale, dtype: torch.dtype) -> torch.Tensor:
    """Attention of one sequence's query q (Hq, D) over its contiguous k, v (L, Hkv, D), computed in `dtype`."""
    k, v = (t.to(dtype).transpose(0, 1)[None] for t in (k, v))  # (1, Hkv, L, D)
    return attention(q[None, :, None].to(dtype), k, v, scale=scale)[0, :, 0]  # (Hq, D)


def contiguous_reference(case: PagedCase, device: str, dtype: torch.dtype) -> torch.Tensor:
    """out (B, Hq, D) of the case's logical sequences, each attended contiguously, in `dtype`."""
    q = logical_query(case, device)
    return torch.stack([contiguous_attention(q[b], *logical_sequence(case, b, device), case.scale, dtype)
                        for b in range(case.B)])


class _Oracle:
    """(float64 stick, eager in the case's dtype, conditioning) of a case, from its contiguous logical sequences; the
    conditioning is max(1, max |scale q.k|) (as the attention contract's score_conditioning). Cached."""

    def __init__(self, size: int = 16):
        self.size, self.store = size, {}

    def __call__(self, case: PagedCase, device: str):
        key = (case, device)
        if key not in self.store:
            if len(self.store) >= self.size:
                self.store.pop(next(iter(self.store)))
            q = logical_query(case, device)
            scale = case.scale if case.scale is not None else case.D**-0.5
            stick, eager, largest = [], [], 0.0
            for b in range(case.B):
                k, v = logical_sequence(case, b, device)
                stick.append(contiguous_attention(q[b], k, v, case.scale, torch.float64))
                eager.append(contiguous_attention(q[b], k, v, case.scale, dtype_of(case.dtype)))
                scores = q[b, :, None].double() @ k.double().permute(1, 2, 0).repeat_interleave(case.Hq // case.Hkv, 0)
                largest = max(largest, float(scores.abs().max()))  # (Hq, 1, L) scores
            self.store[key] = (torch.stack(stick), torch.stack(eager), max(1.0, abs(scale) * largest))
        return self.store[key]


ORACLE = _Oracle()


def _call(impl, call: Call) -> torch.Tensor:
    check_paged_call(call)
    return impl.fn(*call.args, **call.kwargs)


def _check_out(what: str, out: torch.Tensor, case: PagedCase, device: str) -> float:
    stick, eager, conditioning = ORACLE(case, device)
    dtype = dtype_of(case.dtype)

    def eager32():
        return contiguous_reference(case, device, torch.float32)

    # softmax turns an absolute error e in a score into a relative error e in its probability: the floor scales with
    # the largest |scale q.k| (as the attention contract's score_conditioning)
    return tolerance.noise_relative(what, out, stick, eager, dtype, eager_float32=eager32,
                                    magnitude=float(stick.abs().max()) * conditioning)


def matches_reference(impl, case, device):
    return _check_out("out", _call(impl, make_call(case, device)), case, device)


def after_another_call(impl, case, device):
    call = make_call(case, device)
    q, _, _, block_table, seq_lens = call.args
    # one more table column (past every sequence's last block): shapes the impl meets first here
    call = _with(call, block_table=torch.cat([block_table, block_table[:, -1:]], dim=1))
    earlier = _call(impl, _with(call, q=-q, seq_lens=(seq_lens + 1) // 2))  # the same shapes, shorter sequences
    check_earlier = tolerance.unchanged_later(earlier)
    margin = _check_out("out after a call of the same shapes with shorter sequences", _call(impl, call), case, device)
    check_earlier()
    return margin


def _with(call: Call, **replaced) -> Call:
    names = ("q", "k_cache", "v_cache", "block_table", "seq_lens")
    args = dict(zip(names, call.args)) | replaced
    return Call(tuple(args[n] for n in names), call.kwargs)


def relabel_blocks(call: Call, permutation: torch.Tensor) -> Call:
    """The same logical cache with physical block i moved to permutation[i] (every table entry renamed with it)."""
    _, k_cache, v_cache, block_table, _ = call.args
    permutation = permutation.to(k_cache.device)
    moved = []
    for cache in (k_cache, v_cache):
        target = torch.empty_like(cache)
        target[permutation] = cache
        moved.append(target)
    return _with(call, k_cache=moved[0], v_cache=moved[1], block_table=permutation[block_table.long()].int())


def used_slots(call: Call) -> torch.Tensor:
    """(num_blocks, block_size) bool: the slots holding a token some sequence attends to."""
    _, k_cache, _, block_table, seq_lens = call.args
    num_blocks, block_size = k_cache.shape[:2]
    used = torch.zeros(num_blocks * block_size, dtype=torch.bool, device=k_cache.device)
    for b, length in enumerate(seq_lens.tolist()):
        blocks = block_table[b, : -(-length // block_size)].long()
        used[(blocks[:, None] * block_size + torch.arange(block_size, device=blocks.device)).flatten()[:length]] = True
    return used.view(num_blocks, block_size)


def invariant_to_block_permutation(impl, case, device):
    call = make_call(case, device)
    permutation = torch.randperm(call.args[1].shape[0], generator=_generator(case, "cpu", 77))
    tolerance.exact("out after moving every physical block (and renaming it in the table)",
                    _call(impl, relabel_blocks(call, permutation)), _call(impl, call))


def table_tails(call: Call) -> torch.Tensor:
    """(B, max_blocks) bool: the table entries past each sequence's last block."""
    _, k_cache, _, block_table, seq_lens = call.args
    blocks = -(-seq_lens.long() // k_cache.shape[1])  # (B,)
    return torch.arange(block_table.shape[1], device=block_table.device) >= blocks[:, None]


def unused_slots_never_read(impl, case, device):
    call = make_call(case, device)
    used = used_slots(call)[..., None, None]  # (num_blocks, block_size, 1, 1)
    poisoned = _with(call, k_cache=call.args[1].masked_fill(~used, float("nan")),
                     v_cache=call.args[2].masked_fill(~used, float("nan")),
                     block_table=call.args[3].masked_fill(table_tails(call), NO_BLOCK))
    tolerance.exact("out with NaN in every slot past seq_len and every unreferenced block, and the table entries past "
                    "each sequence's last block naming no block", _call(impl, poisoned), _call(impl, call))


def unshared_layout(call: Call) -> Call:
    """The same logical sequences with no block shared: sequence b's blocks copied, in table order, into fresh blocks
    after the existing ones (every table entry past a sequence's last block keeps naming its old, now unused block)."""
    q, k_cache, v_cache, block_table, seq_lens = call.args
    block_size, table = k_cache.shape[1], block_table.clone()
    sources = []
    for b, length in enumerate(seq_lens.tolist()):
        count = -(-length // block_size)
        sources.append(block_table[b, :count].long())
        table[b, :count] = torch.arange(count, dtype=torch.int32, device=table.device) + k_cache.shape[0] + sum(
            len(s) for s in sources[:-1])
    sources = torch.cat(sources)
    return Call((q, torch.cat([k_cache, k_cache[sources]]), torch.cat([v_cache, v_cache[sources]]), table, seq_lens),
                call.kwargs)


def fork_children_exact(impl, case, device):
    call = make_call(case, device)
    _, _, _, block_table, seq_lens = call.args
    block_size = call.args[1].shape[1]
    referenced = torch.cat([block_table[b, : -(-L // block_size)] for b, L in enumerate(seq_lens.tolist())])
    if referenced.unique().numel() == referenced.numel():
        return  # no block ended up shared (every child copied the prefix's only, partial block on write)
    tolerance.exact("out of forked children sharing prefix blocks vs the same sequences in private blocks",
                    _call(impl, call), _call(impl, unshared_layout(call)))


def gqa_head_mapping(impl, case, device):
    call = make_call(case, device)
    Hq, Hkv = case.Hq, case.Hkv
    heads = torch.arange(1, Hkv + 1, dtype=call.args[2].dtype, device=call.args[2].device)  # (Hkv,)
    probe = heads[None, None, :, None].expand(call.args[2].shape).contiguous()  # V of KV head j is j + 1 everywhere
    out = _call(impl, _with(call, v_cache=probe)).float().cpu()  # (B, Hq, D): the KV head each query head read, + 1
    expected = (torch.arange(Hq) // (Hq // Hkv) + 1).float()[None, :, None].expand_as(out)
    wrong = ~((out - expected).abs() <= 0.25)  # NaN reads no head
    if wrong.any():
        b, h, d = (int(i) for i in wrong.nonzero()[0])
        raise PropertyFailed(f"with V of KV head j set to j + 1, query head {h} (batch {b}, dim {d}) got "
                             f"{float(out[b, h, d]):.4g}, expected {int(expected[b, h, d])} (KV head h // {Hq // Hkv})")


def deterministic(impl, case, device):
    call = make_call(case, device)
    tolerance.same_twice(lambda: _call(impl, call))


def no_input_mutation(impl, case, device):
    call = make_call(case, device)
    inputs_unchanged = tolerance.buffers_unchanged_later(
        list(zip(("q", "k_cache", "v_cache", "block_table", "seq_lens"), call.args)))
    _call(impl, call)
    inputs_unchanged()


PROPERTIES = [
    Property("matches_reference", matches_reference,
             doc="out within 2x the eager low-precision error of float64 attention over each contiguous sequence"),
    Property("after_another_call", after_another_call,
             doc="out matches the reference after a call of the same shapes with shorter sequences and another query "
                 "(nothing planned or cached from it), and that call's out is left as it was"),
    Property("invariant_to_block_permutation", invariant_to_block_permutation,
             doc="moving the physical blocks (renaming them in the table) leaves out bitwise unchanged"),
    Property("unused_slots_never_read", unused_slots_never_read,
             doc="NaN in the slots past seq_len and in unreferenced blocks, and table entries past a sequence's "
                 "last block out of range, leave out bitwise unchanged"),
    Property("fork_children_exact", fork_children_exact,
             applies=lambda impl, case: case.shared_prefix > 0 and case.B > 1,
             doc="forked children sharing prefix blocks (partial ones copied on write) give bitwise the out of the "
                 "same sequences in private blocks"),
    Property("gqa_head_mapping", gqa_head_mapping, doc="query head h reads KV head h // (Hq // Hkv)"),
    Property("deterministic", deterministic, doc="two calls are bitwise equal"),
    Property("no_input_mutation", no_input_mutation, doc="q, the caches, the table and seq_lens are unchanged"),
]


# --------------------------------------------------------------------------------------------------- cost


def cost(case: PagedCase, mode: str = "fwd") -> Cost:
    """4 Hq D x (tokens attended) FLOPs; bytes: K and V read once, q read, out written (the table is not counted)."""
    size = dtype_of(case.dtype).itemsize
    tokens = sum(case.seq_lens)
    return Cost(4.0 * case.Hq * case.D * tokens, float(2 * tokens * case.Hkv * case.D * size
                                                       + 2 * case.B * case.Hq * case.D * size))


# The grid: bf16, head dim 128, block 16; GQA 32/8 and MHA 32/32; batch x context.
BENCH_CASES = [PagedCase(B, 32, Hkv, 128, 16, (context,), dtype="bfloat16")
               for Hkv in (8, 32) for B in (1, 16, 64) for context in (1024, 4096, 16384, 65536)]
QUICK_CASES = [PagedCase(4, 8, 2, 64, 16, (500, 77, 1024, 33), dtype="float32"),
               PagedCase(2, 8, 8, 64, 16, (2048,), dtype="float32")]


# --------------------------------------------------------------------------------------------------- memory waste


@dataclass(frozen=True)
class WasteReport:
    """KV memory of one batch of concurrent requests, in token slots: what contiguous max-length preallocation and
    paged allocation reserve, and the fraction of it that holds no token (waste = 1 - utilization)."""

    requests: int
    tokens: int
    contiguous_reserved: int
    paged_reserved: int

    @property
    def contiguous_waste(self) -> float:
        return 1 - self.tokens / self.contiguous_reserved

    @property
    def paged_waste(self) -> float:
        return 1 - self.tokens / self.paged_reserved


def request_lengths(distribution: str, n: int, max_len: int, seed: int = 0) -> torch.Tensor:
    """n request lengths (prompt + generated tokens) in [1, max_len]: "uniform" over that range, or "long_tailed":
    log-normal with median max_len / 16 and sigma 1 (most requests short, a tail reaching the maximum), clipped."""
    gen = torch.Generator().manual_seed(seed)
    if distribution == "uniform":
        return torch.randint(1, max_len + 1, (n,), generator=gen)
    if distribution == "long_tailed":
        normal = torch.randn(n, generator=gen, dtype=torch.float64)
        return (max_len / 16 * torch.exp(normal)).round().clamp(1, max_len).long()
    raise ValueError(f"distribution must be 'uniform' or 'long_tailed', got {distribution!r}")


def simulate_waste(lengths, max_len: int, block_size: int) -> WasteReport:
    """Hold every request at once. Contiguous: each reserves max_len slots up front. Paged: each request's tokens are
    appended through a BlockManager, which allocates a block only when the last one is full; reserved = blocks in
    use x block_size."""
    lengths = [int(L) for L in lengths]
    if max(lengths) > max_len or min(lengths) < 1:
        raise ValueError(f"lengths must lie in [1, max_len = {max_len}]")
    manager = BlockManager(sum(-(-L // block_size) for L in lengths), block_size)
    for i, length in enumerate(lengths):
        manager.add(i)
        manager.append(i, length)
    in_use = len(manager.refcount) - manager.num_free
    return WasteReport(len(lengths), sum(lengths), len(lengths) * max_len, in_use * block_size)


# --------------------------------------------------------------------------------------------------- claims


def claims() -> list[Claim]:
    """The seed's PagedAttention statements (section 2.2)."""
    max_len, block = 2048, 16
    reports = {d: simulate_waste(request_lengths(d, 1000, max_len, seed=0), max_len, block)
               for d in ("uniform", "long_tailed")}
    u, t = reports["uniform"], reports["long_tailed"]
    simulation = (f"1000 concurrent requests, max_len {max_len}, block {block}: uniform lengths in [1, {max_len}] "
                  f"or log-normal (median max_len/16, sigma 1)")
    ledger = [
        Claim("paged_attention.contiguous_waste", "max-length contiguous preallocation wastes 60-80% of KV memory",
              "60-80%", "% of reserved KV memory", f"uniform lengths: {100 * u.contiguous_waste:.1f}%; long-tailed "
              f"(log-normal, median {max_len // 16}): {100 * t.contiguous_waste:.1f}%. Waste = 1 - mean length / "
              "max_len exactly, so 60-80% means requests use 20-40% of the reserved maximum on average",
              simulate_waste.__name__ + ": " + simulation, "cpu",
              "not checkable here"),
    ]
    for name, used, reserved, seed_value in (("request_200_of_4096", 200, 4096, "95%"),
                                             ("request_1500_of_4096", 1500, 4096, "63%")):
        report = simulate_waste([used], reserved, block)
        ledger.append(Claim(f"paged_attention.example.{name}", f"a request preallocating {reserved} tokens that uses "
                            f"{used} wastes {seed_value}", seed_value, "% of reserved KV memory",
                            f"{100 * report.contiguous_waste:.1f}% (paged: {100 * report.paged_waste:.1f}%)",
                            "simulate_waste of that one request, block 16", "cpu",
                            "confirmed" if round(100 * report.contiguous_waste) == int(seed_value[:-1]) else "wrong"))
    ledger += [
        Claim("paged_attention.utilization", "paged allocation, freed at completion, gives near-100% KV memory "
              "utilization", "near 100%", "% of reserved KV memory", f"uniform: {100 * (1 - u.paged_waste):.2f}%, "
              f"long-tailed: {100 * (1 - t.paged_waste):.2f}% (only the last, partial block of a request wastes "
              f"slots: < {block} per request)", simulate_waste.__name__ + ": " + simulation, "cpu",
              "confirmed" if min(1 - u.paged_waste, 1 - t.paged_waste) >= 0.95 else "wrong"),
        Claim("paged_attention.vllm_throughput", "vLLM serves 2-4x the throughput of Hugging Face Transformers",
              "2-4x", "x throughput", None, "needs an end-to-end serving benchmark (vLLM engine, request traces)", "-",
              "not checkable here"),
    ]
    return ledger


def kv_bytes(case: PagedCase) -> int:
    """Bytes of K and V the case's sequences hold."""
    return 2 * sum(case.seq_lens) * case.Hkv * case.D * dtype_of(case.dtype).itemsize


MIB, GIB = 2**20, 2**30


def _in_band(case) -> bool:
    return 64 * MIB <= kv_bytes(case) <= GIB


def _long_single(case) -> bool:
    return case.B == 1 and max(case.seq_lens) >= 16384


# The inference issue's goals for the in-house kernel, same run.
GOALS = (
    Goal("triton_paged.copy_bandwidth", "triton_paged >= 85% of the measured copy bandwidth with >= 1 GiB of K/V",
         "triton_paged", "roofline_pct", 85.0, applies=lambda case, mode: kv_bytes(case) >= GIB),
    Goal("triton_paged.vs_fa3", "triton_paged >= 1.0x vLLM FA3 from 64 MiB to 1 GiB of K/V", "triton_paged",
         "speedup", 1.0, baseline="vllm_fa3", applies=lambda case, mode: _in_band(case)),
    Goal("triton_paged.split_kv", "triton_paged >= 1.1x vLLM FA3 at batch 1, context >= 16k (split-KV)",
         "triton_paged", "speedup", 1.1, baseline="vllm_fa3", applies=lambda case, mode: _long_single(case)),
    Goal("triton_paged.elsewhere", "triton_paged within 5% of the best library on the other cases", "triton_paged",
         "speedup", 0.95, baseline="best library",
         applies=lambda case, mode: not _in_band(case) and not _long_single(case)),
)

CONTRACT = Contract(
    name="paged_attention",
    reference=paged_attention,
    validate=check_paged_call,
    case_type=PagedCase,
    cases=cases,
    make_call=make_call,
    properties=PROPERTIES,
    bench_cases=BENCH_CASES,
    quick_cases=QUICK_CASES,
    cost=cost,
    features=features,
    feature_names=FEATURES,
    claims=claims,
    goals=GOALS,
    baseline_impl="vllm_fa3",
    examples=examples,
    examples_budget={"cpu": 20},
)
