"""Known-wrong paged decode kernels, each with one classic bug; `llmopt verify paged_attention --impl FILE:FUNC` must
reject every one on CPU within the default budget. Written as a kernel author would (gather a sequence's blocks
through its table row, online softmax in float32 over tiles), not from the reference module."""
import random

import torch


def _table_blocks(row, L, bs):
    return row[: -(-L // bs)].long()


def _first_tokens(L, blocks, bs):
    return torch.arange(blocks * bs) < L


def _group_head(h, Hq, Hkv):
    return h // (Hq // Hkv)


def _decode(q, k_cache, v_cache, block_table, seq_lens, scale, *, blocks_of=_table_blocks, kept=_first_tokens,
            kv_head_of=_group_head, tile=None, order=None, zero_masked_values=True, first_max=float("-inf")):
    """out (B, Hq, D): per sequence, read the physical blocks blocks_of(row, L, bs), keep the slots kept(L, blocks,
    bs), run an online softmax in float32 over tiles of `tile` slots merged in `order` (default: table order), its
    running max starting at first_max."""
    B, Hq, D = q.shape
    bs, Hkv = k_cache.shape[1], k_cache.shape[2]
    scale = D**-0.5 if scale is None else scale
    heads = kv_head_of(torch.arange(Hq), Hq, Hkv)
    wide = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = torch.empty(B, Hq, D, dtype=q.dtype)
    for b in range(B):
        L = int(seq_lens[b])
        blocks = blocks_of(block_table[b], L, bs)
        keep = kept(L, len(blocks), bs)  # (slots,)
        k = k_cache[blocks].flatten(0, 1)[:, heads].to(wide)  # (slots, Hq, D)
        v = v_cache[blocks].flatten(0, 1)[:, heads].to(wide)
        if zero_masked_values:
            v = torch.where(keep[:, None, None], v, 0.0)
        scores = (torch.einsum("hd,shd->hs", q[b].to(wide), k) * scale).masked_fill(~keep, float("-inf"))  # (Hq, slots)
        step = tile or scores.shape[1]
        starts = list(range(0, scores.shape[1], step))
        m = torch.full((Hq, 1), first_max, dtype=wide)
        total = torch.zeros(Hq, 1, dtype=wide)
        acc = torch.zeros(Hq, D, dtype=wide)
        for start in (order(starts, blocks) if order else starts):
            s = scores[:, start:start + step]
            m_new = torch.maximum(m, s.amax(1, keepdim=True))
            m_safe = torch.where(torch.isinf(m_new), 0.0, m_new)  # nothing seen yet
            p = torch.exp(s - m_safe)
            alpha = torch.exp(m - m_safe)
            total = alpha * total + p.sum(1, keepdim=True)
            acc = alpha * acc + torch.einsum("hs,shd->hd", p, v[start:start + step])
            m = m_new
        out[b] = (acc / total).to(q.dtype)
    return out


def ignores_seq_lens(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    """Attends to every slot of every block in the table row, as if each row were full."""
    return _decode(q, k_cache, v_cache, block_table, seq_lens, scale, blocks_of=lambda row, L, bs: row.long(),
                   kept=lambda L, blocks, bs: torch.ones(blocks * bs, dtype=torch.bool))


def logical_instead_of_physical(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    """Reads cache block i for logical block i, never looking the block up in the table."""
    return _decode(q, k_cache, v_cache, block_table, seq_lens, scale,
                   blocks_of=lambda row, L, bs: torch.arange(-(-L // bs)))


def off_by_one_at_block_boundary(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    """Takes the last block's token count as L % block_size: 0 instead of block_size when L is a multiple of it."""
    return _decode(q, k_cache, v_cache, block_table, seq_lens, scale,
                   kept=lambda L, blocks, bs: torch.arange(blocks * bs) < (blocks - 1) * bs + L % bs)


def wrong_gqa_mapping(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    """Query head h reads KV head h % Hkv instead of h // (Hq // Hkv)."""
    return _decode(q, k_cache, v_cache, block_table, seq_lens, scale, kv_head_of=lambda h, Hq, Hkv: h % Hkv)


def physical_order_accumulation(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    """Merges a sequence's blocks in ascending physical block number (for locality) instead of table order: the same
    softmax up to rounding, but the result depends on where the blocks happen to lie."""
    bs = k_cache.shape[1]
    return _decode(q, k_cache, v_cache, block_table, seq_lens, scale, tile=bs,
                   order=lambda starts, blocks: sorted(starts, key=lambda start: int(blocks[start // bs])))


def unmasked_tail_values(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    """Masks the scores past seq_len but multiplies their zero probabilities with the last block's whole V: finite
    garbage times 0 vanishes, a NaN in an unused slot does not."""
    return _decode(q, k_cache, v_cache, block_table, seq_lens, scale, zero_masked_values=False)


def prescales_keys_in_place(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    """Multiplies each referenced K block by the softmax scale in place, once per sequence that references it: a block
    shared by forked sequences is scaled twice (and the caller's cache is modified)."""
    factor = q.shape[-1] ** -0.5 if scale is None else scale
    for b in range(q.shape[0]):
        for block in _table_blocks(block_table[b], int(seq_lens[b]), k_cache.shape[1]).tolist():
            k_cache[block] *= factor
    return _decode(q, k_cache, v_cache, block_table, seq_lens, 1.0)


def racy_split_combine(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    """Split-KV over tiles of 4 slots whose partial results are merged in whatever order they finish (as with
    atomics): right up to rounding, but two calls differ."""
    return _decode(q, k_cache, v_cache, block_table, seq_lens, scale, tile=4,
                   order=lambda starts, blocks: random.sample(starts, len(starts)))


def running_max_starts_at_zero(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    """Starts the online softmax's running max at 0 instead of -inf (`m_i = tl.zeros(...)`): exact while some score
    of a head is above about -100, but a head whose scores are all shifted far below (keys sharing a large component)
    underflows every exp to 0 and returns 0 / 0."""
    return _decode(q, k_cache, v_cache, block_table, seq_lens, scale, tile=k_cache.shape[1], first_max=0.0)


def dereferences_entry_past_last_block(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    """Loads L // block_size + 1 blocks (one too many when L is a multiple of block_size) and masks the extra slots:
    right while the table entry past the last block names some block, an out-of-bounds read when it names none."""
    return _decode(q, k_cache, v_cache, block_table, seq_lens, scale,
                   blocks_of=lambda row, L, bs: row[: L // bs + 1].long())


def group_by_bit_shift(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    """Maps query head h to KV head h >> floor(log2(Hq // Hkv)): h // group for groups of 1, 2, 4, 8, wrong for the
    others (3 here; 7 in Qwen2-7B's 28 query heads over 4 KV heads)."""
    return _decode(q, k_cache, v_cache, block_table, seq_lens, scale,
                   kv_head_of=lambda h, Hq, Hkv: (h >> ((Hq // Hkv).bit_length() - 1)).clamp(max=Hkv - 1))


def shared_blocks_taken_as_full(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    """Treats a last block that several sequences hold as full, as prefix-cache blocks are: forked siblings that have
    written nothing past a partial block still share it, and read its stale slots."""
    bs = k_cache.shape[1]
    rows = [_table_blocks(block_table[b], int(seq_lens[b]), bs).tolist() for b in range(q.shape[0])]
    lengths = seq_lens.clone()
    for b, row in enumerate(rows):
        if sum(row[-1] in other for other in rows) > 1:
            lengths[b] = len(row) * bs
    return _decode(q, k_cache, v_cache, block_table, lengths, scale)


def zero_scale_taken_as_default(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    """Reads the scale as `scale or D ** -0.5`: an explicit scale of 0 (every visible slot weighs alike) becomes the
    default."""
    return _decode(q, k_cache, v_cache, block_table, seq_lens, scale or q.shape[-1] ** -0.5)


def q_read_with_contiguous_strides(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    """Reads q through the strides of a contiguous (B, Hq, D) tensor, as a kernel handed q's pointer without its
    strides: right for a contiguous q, other rows' key and value columns for q sliced out of a fused qkv projection."""
    packed = torch.as_strided(q, q.shape, (q.shape[1] * q.shape[2], q.shape[2], 1), q.storage_offset())
    return _decode(packed, k_cache, v_cache, block_table, seq_lens, scale)


_OUTPUTS = {}


def one_output_buffer_per_shape(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    """Writes every call's out into one buffer kept per shape and dtype (as for CUDA graph replay) and returns that
    buffer: the next call of the same shapes overwrites what this one returned."""
    out = _OUTPUTS.setdefault((tuple(q.shape), q.dtype), torch.empty(q.shape, dtype=q.dtype))
    return out.copy_(_decode(q, k_cache, v_cache, block_table, seq_lens, scale))


_LONGEST = {}


def split_plan_cached_per_shape(q, k_cache, v_cache, block_table, seq_lens, *, scale=None):
    """Plans the split-KV chunks from the longest sequence of the first call of each shape and reuses the plan: a
    later call of the same shapes with longer sequences loses the tokens past the planned chunks."""
    key = (tuple(q.shape), tuple(k_cache.shape), tuple(block_table.shape))
    planned = _LONGEST.setdefault(key, int(seq_lens.max()))
    return _decode(q, k_cache, v_cache, block_table, seq_lens.clamp(max=planned), scale)
