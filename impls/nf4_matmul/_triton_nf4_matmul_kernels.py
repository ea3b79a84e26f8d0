"""Fused NF4 matmul y = x·ŵᵀ in Triton for a weight stored in bitsandbytes' NF4 format (QLoRA, Dettmers et al. 2023),
never writing ŵ to global memory. Two kernels. _nf4_mma_kernel, 2+ tokens of bf16/fp16 x (blocks of 64, aligned rows): a
warp owns 16 weight rows; each lane looks its bytes of codes up in a shared-memory pair table (both levels, each as two
terms of x's dtype), which are the A fragments of two m16n8k16 mmas against x as B (inline PTX), each block's mma sum
scaled by its absmax. _nf4_matmul_kernel, the rest (PATH): "words", one bf16/fp16 token: 32-bit words of codes (8
elements) in inline PTX against x decoded once per thread, each byte looked up in a shared-memory table of both its
levels (one conflict-free load per byte: a pair of fp16 levels for bf16 x, of float32 for fp16 x), the words read as
[blocks, rows, words] tiles or, where x and the rows of codes are 16-byte aligned, as [rows, chunks of 16 bytes] tiles
loaded by inline assembly; "bytes", one token of any dtype or layout: the same in plain Triton on byte tiles, levels
from the 16-entry table; "dot", 2+ tokens the mma kernel does not take (float32 x, other block sizes, unaligned x): each
word decoded in one thread to its 8 weights, tensor-core dots over BLOCK_M = 16 tokens. Absmax plain or double-quantized
(decoded in place). Codes whose storage is not 4-byte (8-byte for mma) aligned are copied first. SPLIT_K > 1: K cut into
spans, the tile's last span to finish adds the float32 partials in span order (one launch, deterministic); stream-K
chunk tiles (Osama et al. 2023, "Stream-K") give a round of programs equal shares of all tiles' steps, cutting tiles in
two. Requires K % blocksize == 0 (a block never spans two rows)."""
from __future__ import annotations

import ctypes
import functools
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from llmopt.impls._arrivals import arrival_counters, last_to_arrive
from llmopt.impls._host import Launches, autotune, cdiv
from llmopt.impls.nf4._triton_nf4_kernels import block_absmax, device_tables
from llmopt.reference.nf4_format import DQ_BLOCKSIZE

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# ----------------------------------------------------------------------------------------------- one token, words

# Byte table: entry b (0..255, one byte of codes) holds the levels of its two elements, (level[b >> 4], level[b & 15]),
# as two float32 ("f32", 8 bytes) or as one pair of fp16 ("f16", 4 bytes, the high nibble's in the low half), stored
# copies times side by side (128 bytes an entry, 32 KiB) so that the lanes one shared-memory load serves together each
# read their own copy, whatever bytes they look up: 16 copies for 8-byte loads (a half-warp at a time), 32 for 4-byte
# loads (the whole warp). fp16 levels are the one-token path's for bf16 x from _F16_LEVELS_MIN_WEIGHT elements up:
# half the shared-memory wavefronts, two more instructions a byte (the conversions), each level rounded by at most
# 2^-11 of itself (bf16's rounding of ŵ in a dequantize-then-matmul: up to 2^-8); fp16 x and the dot path keep float32
# levels. Probed on the H100 beside the float32 table (2026-12-07, autotuned, graph replays,
# results/h100/probes/2026-12-07-nf4-f16-table-probe.json): 28672 x 8192 57.6 µs against 59.7 (double-quantized 57.3
# against 59.1), 11008 x 4096 17.5 against 18.3, 8192² 20.8 against 21.4; at 4096² 10.6 against 10.1 (there a program
# an SM waits on its instructions; Nsight Compute at 28672 x 8192 counted 7.1 M L1 wavefronts against 13.2 M). Below
# the threshold they would not hold the contract everywhere: emulated on its small draws (bench/nf4_tolerance.py, one
# bf16 token, K 64-512) 1 and 2 of 3000 fail (float32 levels: none); at 8192 x 4096, 512 x 65536 and 8 x 4194304 their
# margins equal float32 levels' (0.18-0.33), the output's own rounding dominating.
_TABLE_LAYOUT = {"f32": (8, 16), "f16": (4, 32)}  # levels -> (bytes an entry copy, copies)
_TABLE_BYTES = 32768
_F16_LEVELS_MIN_WEIGHT = 1 << 25  # N·K: between 4096² and 11008 x 4096


def _level_format(use_dot: bool, pairs: bool, dtype: torch.dtype, weight_elements: int) -> str:
    """The byte table's levels for a launch: fp16 for one token of bf16 read as pairs times a weight of at least
    _F16_LEVELS_MIN_WEIGHT elements, float32 otherwise."""
    one_bf16_token = pairs and not use_dot and dtype == torch.bfloat16
    return "f16" if one_bf16_token and weight_elements >= _F16_LEVELS_MIN_WEIGHT else "f32"


def _table_setup_asm(threads: int, levels: str) -> str:
    """PTX that declares the byte table (levels "f32" or "f16") in shared memory, fills it from the 16 float32 levels
    at $1, waits for the whole program and returns the table's address in $0. Thread t stores slots t, t + threads,
    ... (slot i: copy i % copies of entry i // copies); its entries c + group·k (c = t // copies, group = threads //
    copies dividing 16) have high nibble (group·k) // 16 and low nibble c + (group·k) % 16, so it loads the 16 levels
    and its 16 / group low-nibble levels once, then stores each slot from registers."""
    slot_bytes, copies = _TABLE_LAYOUT[levels]
    group = threads // copies  # entries one round of the threads fills
    if threads % copies or 16 % group:
        raise ValueError(f"the {levels} byte table's fill needs {copies} x (1, 2, 4, 8 or 16) threads, got {threads}")
    lows = 16 // group
    lines = [f".shared .align 128 .b8 table[{_TABLE_BYTES}];", ".reg .b32 t, a, r;", ".reg .b64 p;",
             f".reg .f32 h<16>, l<{lows}>;", "mov.u32 $0, table;", "mov.u32 t, %tid.x;",
             f"mad.lo.u32 a, t, {slot_bytes}, $0;", f"shr.u32 t, t, {copies.bit_length() - 1};",
             "mul.wide.u32 p, t, 4;", "add.u64 p, p, $1;"]
    lines += [f"ld.global.nc.f32 h{q}, [$1+{4 * q}];" for q in range(16)]
    lines += [f"ld.global.nc.f32 l{i}, [p+{4 * group * i}];" for i in range(lows)]  # level[c + group·i]
    for k in range(_TABLE_BYTES // slot_bytes // threads):
        high, low, offset = (group * k) >> 4, k % lows, slot_bytes * threads * k
        lines.append(f"st.shared.v2.f32 [a+{offset}], {{h{high}, l{low}}};" if levels == "f32"
                     else f"cvt.rn.f16x2.f32 r, l{low}, h{high}; st.shared.b32 [a+{offset}], r;")
    lines.append("bar.sync 0;")
    return "{\n" + "\n".join(lines) + "\n}"


# $0: Σ over the word's 8 elements of level · x. $1: the word (byte j: element 2j high nibble, 2j + 1 low nibble);
# $2..$9: x of elements 0..7 as float32; $10: the byte table's address. Per byte: its entry's address (lane's copy),
# one load of both levels (fp16: two exact conversions), two FMAs.
_WORD_DOT_BYTE = {
    "f32": """bfe.u32 a, $1, {shift}, 8; mad.lo.u32 a, a, 128, b;
    ld.shared.v2.f32 {{h, l}}, [a]; fma.rn.f32 s, h, ${even}, s; fma.rn.f32 s, l, ${odd}, s;""",
    "f16": """bfe.u32 a, $1, {shift}, 8; mad.lo.u32 a, a, 128, b;
    ld.shared.b32 r, [a]; mov.b32 {{e, o}}, r; cvt.f32.f16 h, e; cvt.f32.f16 l, o;
    fma.rn.f32 s, h, ${even}, s; fma.rn.f32 s, l, ${odd}, s;"""}
_WORD_DOT_ASM = {levels: "{\n    .reg .b32 a, b, r;\n    .reg .b16 e, o;\n    .reg .f32 h, l, s;\n"
                 f"    mov.u32 b, %laneid; and.b32 b, b, {copies - 1}; mad.lo.u32 b, b, {slot_bytes}, $10; "
                 "mov.f32 s, 0f00000000;\n    "
                 + "\n    ".join(_WORD_DOT_BYTE[levels].format(shift=8 * j, even=2 + 2 * j, odd=3 + 2 * j)
                                 for j in range(4))
                 + "\n    mov.f32 $0, s;\n}" for levels, (slot_bytes, copies) in _TABLE_LAYOUT.items()}

# $0..$7: the word's 8 elements of ŵ = level · absmax, each product rounded to float32, then to x's 16-bit dtype (as
# Triton's multiply and cast would); $8: the word, $9: its block's absmax, $10: the byte table's address. Per byte: its
# entry's address, one 8-byte load of both levels, two products, one conversion of the pair.
_WORD_WEIGHTS_BYTE = """bfe.u32 a, $8, {shift}, 8; mad.lo.u32 a, a, 128, b;
    ld.shared.v2.f32 {{h, l}}, [a]; mul.rn.f32 h, h, $9; mul.rn.f32 l, l, $9;
    cvt.rn.{dtype}x2.f32 r, l, h; mov.b32 {{${even}, ${odd}}}, r;"""
_WORD_WEIGHTS_ASM = {torch_dtype: "{\n    .reg .b32 a, b, r;\n    .reg .f32 h, l;\n"
                     f"    mov.u32 b, %laneid; and.b32 b, b, {_TABLE_LAYOUT['f32'][1] - 1}; "
                     f"mad.lo.u32 b, b, {_TABLE_LAYOUT['f32'][0]}, $10;\n    "
                     + "\n    ".join(_WORD_WEIGHTS_BYTE.format(shift=8 * j, dtype=dtype, even=2 * j,
                                                             odd=2 * j + 1) for j in range(4))
                     + "\n}" for torch_dtype, dtype in ((torch.bfloat16, "bf16"), (torch.float16, "f16"))}

# A block's absmax loaded by inline assembly, so that it takes the layout of the words it scales (a Triton load would
# take its own and be moved across in shared memory, a barrier each step). $0: the absmax (0 where $mask is 0).
# Plain: $1 its address, $2 the mask. Double-quantized, as bitsandbytes decodes it (a product, then a sum, each
# rounded): $1 the 8-bit code's address, $2 the scale's, $3 the mask, $4 the dynamic map, $5 the mean offset. The map
# entry is loaded unpredicated (entry 0 where masked: in bounds), which ptxas compiles to fewer registers and
# instructions than a predicated dependent load (sm_90, 32 x 1024 4-warp chunk tile: 128 registers against 167, 4.53
# loop instructions an element against 4.69; results/sm_90/nf4_sass.json). On the H100 (c8a0fe4, autotuned, one token,
# graph replays, results/h100/probes/2026-12-07-nf4-dq-map-load-probe.json): 28672 x 8192 53.2 µs against 57.4, 8192²
# 22.3 against 23.3; the decode then costs no more than reading the code (53.2 with the code itself as the level).
_ABSMAX_ASM = {
    False: """{
    .reg .pred p;
    setp.ne.b32 p, $2, 0; mov.f32 $0, 0f00000000;
    @p ld.global.nc.f32 $0, [$1];
}""",
    True: """{
    .reg .pred p;
    .reg .b32 c;
    .reg .b64 q;
    .reg .f32 d, s;
    setp.ne.b32 p, $3, 0; mov.f32 $0, 0f00000000; mov.b32 c, 0;
    @p ld.global.nc.u8 c, [$1]; @p ld.global.nc.f32 s, [$2];
    mul.wide.u32 q, c, 4; add.u64 q, q, $4; ld.global.nc.f32 d, [q];
    @p mul.rn.f32 d, d, s; @p add.rn.f32 $0, d, $5;
}"""}


# A chunk: 16 bytes of one row's codes (32 elements, half a block of 64) or of x's pairs, one vector load in inline
# assembly. Loads of Triton's own would give a [rows, chunks] tile the layout of their addresses (lanes down the rows,
# each in a different row); by assembly the tile keeps Triton's default, lanes along a row's chunks, so a warp reads up
# to 512 contiguous bytes of one row an instruction. $0..$3: the 4 words at $4 (16-byte aligned), zeros where $5 is 0.
_CHUNK_LOAD_ASM = """{
    .reg .pred p;
    setp.ne.b32 p, $5, 0; mov.b32 $0, 0; mov.b32 $1, 0; mov.b32 $2, 0; mov.b32 $3, 0;
    @p ld.global.nc.v4.u32 {$0, $1, $2, $3}, [$4];
}"""


@triton.jit
def _pair_values(pair, X_PAIRS: tl.constexpr):
    """float32 (x[2j], x[2j + 1]) of an int32 holding a bf16 or fp16 pair, little endian."""
    if X_PAIRS == "bf16":
        return (pair << 16).to(tl.float32, bitcast=True), (pair & -65536).to(tl.float32, bitcast=True)
    even = (pair & 65535).to(tl.int16).to(tl.float16, bitcast=True)
    odd = ((pair >> 16) & 65535).to(tl.int16).to(tl.float16, bitcast=True)
    return even.to(tl.float32), odd.to(tl.float32)


@triton.jit
def _byte_levels(words, BYTE: tl.constexpr, table_ptr):
    """(level of the high nibble, of the low nibble) of byte BYTE of each word: elements 2·BYTE and 2·BYTE + 1, with
    plain loads of the 16-entry table."""
    return tl.load(table_ptr + ((words >> (8 * BYTE + 4)) & 15)), tl.load(table_ptr + ((words >> (8 * BYTE)) & 15))


@triton.jit
def _byte_dot(words, even, odd, BYTE: tl.constexpr, table_ptr):
    """level(element 2·BYTE) · x[2·BYTE] + level(element 2·BYTE + 1) · x[2·BYTE + 1], with plain loads."""
    high, low = _byte_levels(words, BYTE, table_ptr)
    return high * even + low * odd


@triton.jit
def _word_dot(words, x0, x1, x2, x3, x4, x5, x6, x7, table_ptr, byte_table, WORD_DOT_ASM: tl.constexpr):
    """Σ over the 8 elements of each word of codes of level · x (float32); x0..x7 float32. Inline PTX on the GPU
    (WORD_DOT_ASM over the byte table in shared memory at byte_table: the same sum, of fp16-rounded levels with an
    "f16" table), plain loads of the float32 levels otherwise (Triton's interpreter)."""
    if WORD_DOT_ASM != "":
        return tl.inline_asm_elementwise(WORD_DOT_ASM, "=f,r,f,f,f,f,f,f,f,f,r",
                                         [words, x0, x1, x2, x3, x4, x5, x6, x7, byte_table], dtype=tl.float32,
                                         is_pure=True, pack=1)
    return (_byte_dot(words, x0, x1, 0, table_ptr) + _byte_dot(words, x2, x3, 1, table_ptr)
            + _byte_dot(words, x4, x5, 2, table_ptr) + _byte_dot(words, x6, x7, 3, table_ptr))


@triton.jit
def _byte_weights(words, BYTE: tl.constexpr, absmax, table_ptr, dtype):
    """ŵ in dtype of elements 2·BYTE and 2·BYTE + 1 of each word, with plain loads."""
    high, low = _byte_levels(words, BYTE, table_ptr)
    return (high * absmax).to(dtype), (low * absmax).to(dtype)


@triton.jit
def _word_weights(words, absmax, table_ptr, byte_table, x_ptr, WORD_ASM: tl.constexpr):
    """ŵ [BLOCK_N, 8·WORDS] in x's dtype, of words [BLOCK_N, WORDS] and their blocks' absmax [BLOCK_N, WORDS]: each
    element's level · absmax in float32, rounded to x's dtype. Inline PTX on the GPU (WORD_ASM: _WORD_WEIGHTS_ASM
    over the byte table at byte_table), plain loads of the 16 levels otherwise (Triton's interpreter, float32 x). The 8
    elements of a word stay in one thread: joined into [BLOCK_N, WORDS, 2, 2, 2] (element 4i + 2j + k at [.., i, j,
    k]) and read back as rows."""
    dtype = x_ptr.dtype.element_ty
    if WORD_ASM != "":
        e0, e1, e2, e3, e4, e5, e6, e7 = tl.inline_asm_elementwise(
            WORD_ASM, "=h,=h,=h,=h,=h,=h,=h,=h,r,f,r", [words, absmax, byte_table], dtype=(dtype,) * 8, is_pure=True,
            pack=1)
    else:
        e0, e1 = _byte_weights(words, 0, absmax, table_ptr, dtype)
        e2, e3 = _byte_weights(words, 1, absmax, table_ptr, dtype)
        e4, e5 = _byte_weights(words, 2, absmax, table_ptr, dtype)
        e6, e7 = _byte_weights(words, 3, absmax, table_ptr, dtype)
    BLOCK_N: tl.constexpr = words.shape[0]
    WORDS: tl.constexpr = words.shape[1]
    joined = tl.join(tl.join(tl.join(e0, e4), tl.join(e2, e6)), tl.join(tl.join(e1, e5), tl.join(e3, e7)))
    return tl.reshape(joined, (BLOCK_N, 8 * WORDS))


@triton.jit
def _words_load(words_ptr, stride_words, x_pairs_ptr, absmax_ptr, scales_ptr, offset_ptr, dynamic_ptr, rows, rows_in,
                x_row, K, k0, step_blocks, BLOCKSIZE: tl.constexpr, STEP_BLOCK: tl.constexpr,
                DOUBLE_QUANT: tl.constexpr, DQ_BLOCKSIZE: tl.constexpr, ABSMAX_ASM: tl.constexpr):
    """What the step of K at k0 reads (zeros past K), in the words' own layout: (words [BPS, BLOCK_N, WPB], x as each
    word's 4 pairs p0..p3 [BPS, 1, WPB] (pair j: elements 2j, 2j + 1), absmax [BPS, BLOCK_N, 1]); rows [1, BLOCK_N, 1],
    step_blocks [BPS, 1, 1], each of STEP_BLOCK elements (_step_absmax). The absmax by ABSMAX_ASM on the GPU (no
    layout of its own), by block_absmax under Triton's interpreter."""
    WORDS_PER_BLOCK: tl.constexpr = STEP_BLOCK // 8
    step_in, absmax = _step_absmax(absmax_ptr, scales_ptr, offset_ptr, dynamic_ptr, rows, rows_in, K, k0, step_blocks,
                                   BLOCKSIZE, DOUBLE_QUANT, DQ_BLOCKSIZE, ABSMAX_ASM)
    word_index = k0 // 8 + step_blocks * WORDS_PER_BLOCK + tl.arange(0, WORDS_PER_BLOCK)[None, None, :]  # [BPS, 1, WPB]
    words = tl.load(words_ptr + rows * stride_words + word_index, mask=rows_in & step_in, other=0)
    first_pair = x_pairs_ptr + x_row + 4 * word_index
    return (words, tl.load(first_pair, mask=step_in, other=0), tl.load(first_pair + 1, mask=step_in, other=0),
            tl.load(first_pair + 2, mask=step_in, other=0), tl.load(first_pair + 3, mask=step_in, other=0), absmax)


@triton.jit
def _pairs_dot(words, p0, p1, p2, p3, table_ptr, byte_table, X_PAIRS: tl.constexpr, WORD_DOT_ASM: tl.constexpr):
    """Σ level·x over each word of codes, x as the word's 4 pairs p0..p3 (pair j: elements 2j, 2j + 1), decoded to
    float32 once per thread and element, however many rows the thread takes."""
    x0, x1 = _pair_values(p0, X_PAIRS)
    x2, x3 = _pair_values(p1, X_PAIRS)
    x4, x5 = _pair_values(p2, X_PAIRS)
    x6, x7 = _pair_values(p3, X_PAIRS)
    return _word_dot(words, x0, x1, x2, x3, x4, x5, x6, x7, table_ptr, byte_table, WORD_DOT_ASM)


@triton.jit
def _words_dot(acc, loaded, table_ptr, byte_table, X_PAIRS: tl.constexpr, WORD_DOT_ASM: tl.constexpr):
    """acc [BPS, BLOCK_N, WPB] += absmax · Σ level·x over each word of codes (loaded: _words_load's step)."""
    words, p0, p1, p2, p3, absmax = loaded
    return acc + _pairs_dot(words, p0, p1, p2, p3, table_ptr, byte_table, X_PAIRS, WORD_DOT_ASM) * absmax


@triton.jit
def _chunk_load(ptr, mask, CHUNK_ASM: tl.constexpr):
    """The 4 words at ptr .. ptr + 3 (16 bytes, 16-byte aligned), zeros where mask is false: one vector load by
    CHUNK_ASM on the GPU, plain loads otherwise (Triton's interpreter)."""
    if CHUNK_ASM != "":
        return tl.inline_asm_elementwise(CHUNK_ASM, "=r,=r,=r,=r,l,r", [ptr, mask.to(tl.int32)],
                                         dtype=(tl.int32, tl.int32, tl.int32, tl.int32), is_pure=True, pack=1)
    return (tl.load(ptr, mask=mask, other=0), tl.load(ptr + 1, mask=mask, other=0),
            tl.load(ptr + 2, mask=mask, other=0), tl.load(ptr + 3, mask=mask, other=0))


@triton.jit
def _chunks_load(words_ptr, stride_words, x_pairs_ptr, absmax_ptr, scales_ptr, offset_ptr, dynamic_ptr, rows, rows_in,
                 x_row, K, k0, chunks, BLOCKSIZE: tl.constexpr, DOUBLE_QUANT: tl.constexpr,
                 DQ_BLOCKSIZE: tl.constexpr, ABSMAX_ASM: tl.constexpr, CHUNK_ASM: tl.constexpr):
    """What the step of K at k0 reads in chunks of 32 elements (zeros past K): (the 4 words of each chunk of codes
    [BLOCK_N, CHUNKS] each, its x as 4 times 4 pairs [1, CHUNKS] each, absmax [BLOCK_N, CHUNKS]); rows [BLOCK_N, 1],
    chunks [1, CHUNKS]. Codes rows and x 16-byte aligned, BLOCKSIZE a multiple of 32."""
    step_in, absmax = _step_absmax(absmax_ptr, scales_ptr, offset_ptr, dynamic_ptr, rows, rows_in, K, k0,
                                   chunks // (BLOCKSIZE // 32), BLOCKSIZE, DOUBLE_QUANT, DQ_BLOCKSIZE, ABSMAX_ASM)
    words = _chunk_load(words_ptr + rows * stride_words + k0 // 8 + 4 * chunks, rows_in & step_in, CHUNK_ASM)
    first_pair = x_pairs_ptr + x_row + k0 // 2 + 16 * chunks
    return (words, _chunk_load(first_pair, step_in, CHUNK_ASM), _chunk_load(first_pair + 4, step_in, CHUNK_ASM),
            _chunk_load(first_pair + 8, step_in, CHUNK_ASM), _chunk_load(first_pair + 12, step_in, CHUNK_ASM), absmax)


@triton.jit
def _chunks_dot(acc, loaded, table_ptr, byte_table, X_PAIRS: tl.constexpr, WORD_DOT_ASM: tl.constexpr):
    """acc [BLOCK_N, CHUNKS] += absmax · Σ level·x over each chunk of codes (loaded: _chunks_load's step)."""
    words, xa, xb, xc, xd, absmax = loaded
    sums = (_pairs_dot(words[0], xa[0], xa[1], xa[2], xa[3], table_ptr, byte_table, X_PAIRS, WORD_DOT_ASM)
            + _pairs_dot(words[1], xb[0], xb[1], xb[2], xb[3], table_ptr, byte_table, X_PAIRS, WORD_DOT_ASM)
            + _pairs_dot(words[2], xc[0], xc[1], xc[2], xc[3], table_ptr, byte_table, X_PAIRS, WORD_DOT_ASM)
            + _pairs_dot(words[3], xd[0], xd[1], xd[2], xd[3], table_ptr, byte_table, X_PAIRS, WORD_DOT_ASM))
    return acc + sums * absmax


@triton.jit
def _one_token_load(words_ptr, stride_words, x_pairs_ptr, absmax_ptr, scales_ptr, offset_ptr, dynamic_ptr, rows,
                    rows_in, x_row, K, k0, BLOCKSIZE: tl.constexpr, DOUBLE_QUANT: tl.constexpr,
                    DQ_BLOCKSIZE: tl.constexpr, ABSMAX_ASM: tl.constexpr, CHUNK_ASM: tl.constexpr,
                    BLOCK_K: tl.constexpr, CHUNKS: tl.constexpr):
    """The word path's reads of the step at k0: in chunks (_chunks_load) or in words (_words_load); rows [BLOCK_N]."""
    if CHUNKS:  # one return: Triton checks every return of a function against the others, constexpr branches too
        loaded = _chunks_load(words_ptr, stride_words, x_pairs_ptr, absmax_ptr, scales_ptr, offset_ptr, dynamic_ptr,
                              rows[:, None], rows_in[:, None], x_row, K, k0, tl.arange(0, BLOCK_K // 32)[None, :],
                              BLOCKSIZE, DOUBLE_QUANT, DQ_BLOCKSIZE, ABSMAX_ASM, CHUNK_ASM)
    else:
        STEP_BLOCK: tl.constexpr = min(BLOCKSIZE, BLOCK_K)
        loaded = _words_load(words_ptr, stride_words, x_pairs_ptr, absmax_ptr, scales_ptr, offset_ptr, dynamic_ptr,
                             rows[None, :, None], rows_in[None, :, None], x_row, K, k0,
                             tl.arange(0, BLOCK_K // STEP_BLOCK)[:, None, None], BLOCKSIZE, STEP_BLOCK, DOUBLE_QUANT,
                             DQ_BLOCKSIZE, ABSMAX_ASM)
    return loaded


@triton.jit
def _step_absmax(absmax_ptr, scales_ptr, offset_ptr, dynamic_ptr, rows, rows_in, K, k0, step_blocks,
                 BLOCKSIZE: tl.constexpr, DOUBLE_QUANT: tl.constexpr, DQ_BLOCKSIZE: tl.constexpr,
                 ABSMAX_ASM: tl.constexpr):
    """(step_in: blocks of this K step inside the row, absmax: of each row's blocks) of the step at k0, in the
    broadcast of rows and step_blocks (e.g. [BLOCK_N, 1] and [1, BPS] -> [BLOCK_N, BPS]). The absmax by block_absmax,
    or, given ABSMAX_ASM (_ABSMAX_ASM[DOUBLE_QUANT]), by that assembly in the layout of whatever it scales. A step
    holds whole blocks (BLOCK_K a multiple of BLOCKSIZE) or lies in one (BLOCKSIZE a multiple of BLOCK_K, k0 a multiple
    of BLOCK_K): then its only block, step_blocks 0, is k0's."""
    step_in = k0 + step_blocks * BLOCKSIZE < K  # whole blocks (K % BLOCKSIZE == 0): masks constant per block
    blocks = rows * (K // BLOCKSIZE) + k0 // BLOCKSIZE + step_blocks
    inside = rows_in & step_in
    if ABSMAX_ASM == "":
        absmax = block_absmax(absmax_ptr, scales_ptr, offset_ptr, dynamic_ptr, blocks, inside, DOUBLE_QUANT,
                              DQ_BLOCKSIZE)
    elif DOUBLE_QUANT:
        absmax = tl.inline_asm_elementwise(
            ABSMAX_ASM, "=f,l,l,r,l,f",
            [(absmax_ptr + blocks).to(tl.int64), (scales_ptr + blocks // DQ_BLOCKSIZE).to(tl.int64),
             inside.to(tl.int32), dynamic_ptr.to(tl.int64), tl.load(offset_ptr)],
            dtype=tl.float32, is_pure=True, pack=1)  # addresses as integers: pointers of two types
    else:
        absmax = tl.inline_asm_elementwise(ABSMAX_ASM, "=f,l,r", [absmax_ptr + blocks, inside.to(tl.int32)],
                                           dtype=tl.float32, is_pure=True, pack=1)
    return step_in, absmax


@triton.jit
def _split_k_epilogue(partial, out_ptrs, partial_ptr, partial_offsets, mask, arrivals_ptr, tile, split, split_stride,
                      SPLIT_K: tl.constexpr, whole_k):
    """Split-K in one launch, deterministic: each split stores its float32 partial sum at partial_ptr[split, ...]; the
    tile's last split to arrive (last_to_arrive on arrivals_ptr[tile]) adds the SPLIT_K partials in split order and
    stores the sum to out_ptrs. A program that took its tile's whole K (whole_k) stores its sum at once."""
    if whole_k:
        tl.store(out_ptrs, partial.to(out_ptrs.dtype.element_ty), mask=mask)
    else:
        tl.store(partial_ptr + split * split_stride + partial_offsets, partial, mask=mask)
        if last_to_arrive(arrivals_ptr, tile, SPLIT_K):
            total = tl.zeros_like(partial)
            for s in tl.static_range(SPLIT_K):  # split order: the same sum on every run, whoever arrives last
                total += tl.load(partial_ptr + s * split_stride + partial_offsets, mask=mask, other=0.0,
                                 cache_modifier=".cg")
            tl.store(out_ptrs, total.to(out_ptrs.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------- the kernel


@triton.jit
def _nf4_matmul_kernel(
    x_ptr, x_pairs_ptr, codes_ptr, words_ptr, absmax_ptr, scales_ptr, offset_ptr, table_ptr, dynamic_ptr, out_ptr,
    partial_ptr, arrivals_ptr, M, N, K, stride_xm, stride_xk, stride_codes, stride_om, stride_on,
    BLOCKSIZE: tl.constexpr, DOUBLE_QUANT: tl.constexpr, DQ_BLOCKSIZE: tl.constexpr, PATH: tl.constexpr,
    X_PAIRS: tl.constexpr, WORD_ASM: tl.constexpr, TABLE_SETUP_ASM: tl.constexpr, ABSMAX_ASM: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr, TAIL_ROUND: tl.constexpr, STREAM_K: tl.constexpr, PREFETCH: tl.constexpr,
    CHUNKS: tl.constexpr, CHUNK_ASM: tl.constexpr,
):
    """out[M, N] = x[M, K] · ŵ[N, K]ᵀ for weight rows [pid_n·BLOCK_N, +BLOCK_N) and tokens
    [pid_m·BLOCK_M, +BLOCK_M) (PATH "dot") or token pid_m alone (BLOCK_M = 1). BLOCK_K is a multiple or a divisor of
    BLOCKSIZE (both powers of two).
    Tiles are contiguous along the last dimension: [blocks, rows, words] for PATH "words" (block sums kept per word
    until the end), [rows, words] for "dot" (each word's 8 weights joined in its thread), [rows, quantization blocks,
    bytes] for "bytes" (high (even element) and low (odd) nibbles meet the even and odd elements of x); with CHUNKS,
    "words" takes [rows, chunks of 32 elements] tiles instead (_chunks_load: 16-byte loads along a row). SPLIT_K > 1:
    the grid's last tiles (all of them, or with TAIL_ROUND those past the last whole round of programs) are each
    taken by SPLIT_K programs, one of SPLIT_K equal spans of K (whole steps) each, which hand their partial sums to
    _split_k_epilogue; how many tiles split, the kernel reads from the grid's size (tiles + split tiles x (SPLIT_K -
    1)). TAIL_ROUND is the host's only (programs an SM it balanced the tail for). STREAM_K > 0 (chunk tiles, SPLIT_K
    = 2): the grid holds STREAM_K programs an SM (or one a tile, if fewer), each taking an equal share of all tiles'
    steps in order (stream-K: no round of programs is left part-full), its pieces of tiles added by the epilogue."""
    program, pid_m = tl.program_id(0), tl.program_id(1)
    tiles = tl.cdiv(N, BLOCK_N)
    if STREAM_K > 0:  # chunk tiles, one token a program row: equal shares of the (tile, step) work, a tile cut in two
        # at most (the host launches no more programs than tiles); each piece of a tile adds its partial by the split-K
        # epilogue, the piece from K's start as split 0
        steps = tl.cdiv(K, BLOCK_K).to(tl.int64)  # a tile's steps
        work = tiles.to(tl.int64) * steps
        first = program.to(tl.int64) * work // tl.num_programs(0)  # [first, last): this program's steps of the grid
        last = (program + 1).to(tl.int64) * work // tl.num_programs(0)
        x_row = pid_m * (stride_xm // 2)
        byte_table = 0
        if WORD_ASM != "":  # the byte table, once a program
            byte_table = tl.inline_asm_elementwise(TABLE_SETUP_ASM, "=r,l", [table_ptr], dtype=tl.int32,
                                                   is_pure=False, pack=1)
        for tile in range((first // steps).to(tl.int32), tl.cdiv(last, steps).to(tl.int32)):
            tile_start = tile * steps
            k_start = ((tl.maximum(first, tile_start) - tile_start) * BLOCK_K).to(tl.int32)
            k_end = tl.minimum((tl.minimum(last, tile_start + steps) - tile_start) * BLOCK_K, K).to(tl.int32)
            rows = tile * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N] weight rows = outputs
            rows_in = rows < N
            acc = tl.zeros((BLOCK_N, BLOCK_K // 32), dtype=tl.float32)
            # These steps repeat the tile branch's word steps below on purpose. One helper for both (1d5d77e, reverted)
            # changed the sm_90 SASS of 23 of the 180 one-token kernels with float32 levels, every one a prefetching
            # tile, and the H100 then ran 4096², one plain token, in 11.4 µs against 10.3 (graph replays; llmopt gate
            # failed; results/h100/logs/2026-12-07-bench-nf4_matmul-1d5d77e.log). The stream-K kernels compiled the same
            # either way.
            if PREFETCH:
                loaded = _one_token_load(words_ptr, stride_codes // 4, x_pairs_ptr, absmax_ptr, scales_ptr, offset_ptr,
                                         dynamic_ptr, rows, rows_in, x_row, K, k_start, BLOCKSIZE, DOUBLE_QUANT,
                                         DQ_BLOCKSIZE, ABSMAX_ASM, CHUNK_ASM, BLOCK_K, True)
            for k0 in range(k_start, k_end, BLOCK_K):
                if PREFETCH:  # the next step's reads before this step's sums
                    ahead = loaded
                    if k0 + BLOCK_K < k_end:
                        ahead = _one_token_load(words_ptr, stride_codes // 4, x_pairs_ptr, absmax_ptr, scales_ptr,
                                                offset_ptr, dynamic_ptr, rows, rows_in, x_row, K, k0 + BLOCK_K,
                                                BLOCKSIZE, DOUBLE_QUANT, DQ_BLOCKSIZE, ABSMAX_ASM, CHUNK_ASM, BLOCK_K,
                                                True)
                else:
                    loaded = _one_token_load(words_ptr, stride_codes // 4, x_pairs_ptr, absmax_ptr, scales_ptr,
                                             offset_ptr, dynamic_ptr, rows, rows_in, x_row, K, k0, BLOCKSIZE,
                                             DOUBLE_QUANT, DQ_BLOCKSIZE, ABSMAX_ASM, CHUNK_ASM, BLOCK_K, True)
                acc = _chunks_dot(acc, loaded, table_ptr, byte_table, X_PAIRS, WORD_ASM)
                if PREFETCH:
                    loaded = ahead
            _split_k_epilogue(tl.sum(acc, axis=1), out_ptr + pid_m * stride_om + rows * stride_on, partial_ptr,
                              pid_m * N + rows, rows_in, arrivals_ptr, pid_m * tiles + tile, (k_start > 0).to(tl.int32),
                              M * N, 2, (k_start == 0) & (k_end >= K))
    else:
        if SPLIT_K == 1:  # pid_k: the grid's third index, always 0, read at run time: with K's start a constant the
            # loop compiled to more instructions an element (sm_90 SASS of the 32 x 1024 chunk tile: 3.73 against 3.35;
            # double-quantized 4.09 against 3.96), and 11008 x 4096 double-quantized ran 20.4 µs against 17.4 (H100,
            # c4dd801)
            pid_n, pid_k, spans, whole_tiles = program, tl.program_id(2), 1, tiles
        else:  # programs [0, whole_tiles): a tile each, whole K; then SPLIT_K programs a tile
            whole_tiles = tiles - (tl.num_programs(0) - tiles) // (SPLIT_K - 1)
            split_program = tl.maximum(program - whole_tiles, 0)
            whole = program < whole_tiles
            pid_n = tl.where(whole, program, whole_tiles + split_program // SPLIT_K)
            pid_k = tl.where(whole, 0, split_program % SPLIT_K)
            spans = tl.where(whole, 1, SPLIT_K)
        STEP_BLOCK: tl.constexpr = min(BLOCKSIZE, BLOCK_K)  # elements one absmax scales within a step (_step_absmax)
        BLOCKS_PER_STEP: tl.constexpr = BLOCK_K // STEP_BLOCK
        HALF_BLOCK: tl.constexpr = STEP_BLOCK // 2  # bytes of codes per block of a step
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N] weight rows = outputs
        rows_in = rows < N
        step_blocks = tl.arange(0, BLOCKS_PER_STEP)  # [BLOCKS_PER_STEP]
        # [BLOCKS_PER_STEP, HALF_BLOCK]
        step_pairs = step_blocks[:, None] * HALF_BLOCK + tl.arange(0, HALF_BLOCK)[None, :]
        tokens = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
        if PATH == "dot":
            acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        elif PATH == "words" and CHUNKS:
            acc = tl.zeros((BLOCK_N, BLOCK_K // 32), dtype=tl.float32)
        elif PATH == "words":
            acc = tl.zeros((BLOCKS_PER_STEP, BLOCK_N, STEP_BLOCK // 8), dtype=tl.float32)
        else:
            acc = tl.zeros((BLOCK_N, BLOCKS_PER_STEP), dtype=tl.float32)
        byte_table = 0
        if WORD_ASM != "":  # the byte table, filled by the whole program before any lookup
            byte_table = tl.inline_asm_elementwise(TABLE_SETUP_ASM, "=r,l", [table_ptr], dtype=tl.int32, is_pure=False,
                                                   pack=1)
        k_span = tl.cdiv(tl.cdiv(K, spans), BLOCK_K) * BLOCK_K  # K / spans rounded up to whole steps
        k_start = pid_k * k_span
        if PATH == "words" and PREFETCH:  # the first step's reads; each step then issues the next one's before its sums
            loaded = _one_token_load(words_ptr, stride_codes // 4, x_pairs_ptr, absmax_ptr, scales_ptr, offset_ptr,
                                     dynamic_ptr, rows, rows_in, pid_m * (stride_xm // 2), K, k_start, BLOCKSIZE,
                                     DOUBLE_QUANT, DQ_BLOCKSIZE, ABSMAX_ASM, CHUNK_ASM, BLOCK_K, CHUNKS)
        k_end = tl.minimum(k_start + k_span, K)
        for k0 in range(k_start, k_end, BLOCK_K):
            if PATH == "words":
                if PREFETCH:  # the next step's reads in a block of their own: issued before this step's sums
                    ahead = loaded  # (as one straight block, ptxas moved them after the sums, to the loop's end, where
                    if k0 + BLOCK_K < k_end:  # the next step waited on them at once: sm_90 SASS, 2026-12-06)
                        ahead = _one_token_load(words_ptr, stride_codes // 4, x_pairs_ptr, absmax_ptr, scales_ptr,
                                                offset_ptr, dynamic_ptr, rows, rows_in, pid_m * (stride_xm // 2), K,
                                                k0 + BLOCK_K, BLOCKSIZE, DOUBLE_QUANT, DQ_BLOCKSIZE, ABSMAX_ASM,
                                                CHUNK_ASM, BLOCK_K, CHUNKS)
                else:
                    loaded = _one_token_load(words_ptr, stride_codes // 4, x_pairs_ptr, absmax_ptr, scales_ptr,
                                             offset_ptr, dynamic_ptr, rows, rows_in, pid_m * (stride_xm // 2), K, k0,
                                             BLOCKSIZE, DOUBLE_QUANT, DQ_BLOCKSIZE, ABSMAX_ASM, CHUNK_ASM, BLOCK_K,
                                             CHUNKS)
                if CHUNKS:
                    acc = _chunks_dot(acc, loaded, table_ptr, byte_table, X_PAIRS, WORD_ASM)
                else:
                    acc = _words_dot(acc, loaded, table_ptr, byte_table, X_PAIRS, WORD_ASM)
                if PREFETCH:
                    loaded = ahead
            elif PATH == "dot":
                step_words = tl.arange(0, BLOCK_K // 8)  # [BLOCK_K / 8]
                step_in, absmax = _step_absmax(absmax_ptr, scales_ptr, offset_ptr, dynamic_ptr, rows[:, None],
                                               rows_in[:, None], K, k0, (step_words // (BLOCKSIZE // 8))[None, :],
                                               BLOCKSIZE, DOUBLE_QUANT, DQ_BLOCKSIZE,
                                               ABSMAX_ASM)  # [1, W], [BLOCK_N, W]
                words = tl.load(words_ptr + rows[:, None] * (stride_codes // 4) + k0 // 8 + step_words[None, :],
                                mask=rows_in[:, None] & step_in, other=0)  # [BLOCK_N, BLOCK_K / 8]
                weights = _word_weights(words, absmax, table_ptr, byte_table, x_ptr, WORD_ASM)
                step_k = k0 + tl.arange(0, BLOCK_K)  # [BLOCK_K]
                x_tile = tl.load(x_ptr + tokens[:, None] * stride_xm + step_k[None, :] * stride_xk,
                                 mask=(tokens < M)[:, None] & (step_k < K)[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
                acc = tl.dot(weights, tl.trans(x_tile), acc, input_precision=DOT_PRECISION)
            else:
                step_in, absmax = _step_absmax(absmax_ptr, scales_ptr, offset_ptr, dynamic_ptr, rows[:, None],
                                               rows_in[:, None], K, k0, step_blocks[None, :], BLOCKSIZE, DOUBLE_QUANT,
                                               DQ_BLOCKSIZE, "")  # [1, BPS], [BLOCK_N, BPS]
                step_in = tl.reshape(step_in, (BLOCKS_PER_STEP,))
                pair_index = k0 // 2 + step_pairs  # [BPS, HALF_BLOCK]: byte j holds elements 2j (high), 2j + 1 (low)
                pairs_in = step_in[:, None] & (step_pairs >= 0)
                packed = tl.load(codes_ptr + rows[:, None, None] * stride_codes + pair_index[None, :, :],
                                 mask=rows_in[:, None, None] & pairs_in[None, :, :], other=0).to(tl.int32)
                high = tl.load(table_ptr + (packed >> 4))  # [BLOCK_N, BPS, HALF_BLOCK] levels of the even elements
                low = tl.load(table_ptr + (packed & 15))  # ... of the odd elements
                even_ptrs = x_ptr + 2 * pair_index * stride_xk + pid_m * stride_xm  # [BPS, HALF_BLOCK]
                x_even = tl.load(even_ptrs, mask=pairs_in, other=0.0).to(tl.float32)
                x_odd = tl.load(even_ptrs + stride_xk, mask=pairs_in, other=0.0).to(tl.float32)
                sums = tl.sum(high * x_even[None, :, :], axis=2) + tl.sum(low * x_odd[None, :, :], axis=2)
                acc += sums * absmax
        if PATH == "dot":
            out_offsets = tokens[None, :] * stride_om + rows[:, None] * stride_on  # [BLOCK_N, BLOCK_M]
            partial_offsets = tokens[None, :] * N + rows[:, None]
            out_mask = rows_in[:, None] & (tokens < M)[None, :]
            total = acc
        else:
            out_offsets = pid_m * stride_om + rows * stride_on  # [BLOCK_N]
            partial_offsets = pid_m * N + rows
            out_mask = rows_in
            total = tl.sum(tl.sum(acc, axis=2), axis=0) if PATH == "words" and not CHUNKS else tl.sum(acc, axis=1)
        if SPLIT_K == 1:
            tl.store(out_ptr + out_offsets, total.to(out_ptr.dtype.element_ty), mask=out_mask)
        else:
            _split_k_epilogue(total, out_ptr + out_offsets, partial_ptr, partial_offsets, out_mask, arrivals_ptr,
                              pid_m * tiles + pid_n, pid_k, M * N, SPLIT_K, pid_n < whole_tiles)


# ----------------------------------------------------------------------------------------------- 2+ tokens, mma

# Pair table: entry b (one byte of codes) holds both its levels as two terms of x's 16-bit dtype, high = level rounded,
# low = (level - high) rounded, as two 32-bit pairs (high terms, then low terms), the high nibble's (even element) in
# each pair's low half: the A operand registers of two mmas for elements (2j, 2j + 1) whose sum carries the level to
# ~16 bits (one term in x's dtype fails the contract's tolerance now and then: bench/nf4_tolerance.py). Stored 16 times
# side by side (128 bytes an entry, 32 KB), one copy per lane of a half-warp, so a warp's 8-byte loads never conflict;
# the address is a byte extract and a multiply-add.
_PAIR_TABLE_COPIES = 16
_PAIR_ENTRY_BYTES = 8 * _PAIR_TABLE_COPIES
_MMA_TYPES = {torch.bfloat16: "bf16", torch.float16: "f16"}


def _pair_table_setup_asm(threads: int, dtype: torch.dtype) -> str:
    """PTX that declares the pair table in shared memory, fills it from the 16 float32 levels at $1, waits for the whole
    program and returns its address. Thread t (u = t // 16) stores copy t % 16 of entries u, u + 2·warps, ...: entry
    e = u + 2·warps·k has high nibble (2·warps·k) // 16, a constant, and low nibble u + (2·warps·k) % 16, so each thread
    loads the 16 levels and its 8 / warps low-nibble levels once, then per entry rounds one pair to x's dtype, takes
    the two rounding errors in float32 (exact) and rounds them, and stores both pairs (warps divides 8)."""
    warps = threads // 32
    if threads % 32 or 8 % warps:
        raise ValueError(f"the pair table's fill needs 1, 2, 4 or 8 warps, got {threads} threads")
    step = 2 * warps  # entries apart of one thread's successive stores
    lows = 16 // step
    name = _MMA_TYPES[dtype]
    lines = [f".shared .align 128 .b8 pairs[{256 * _PAIR_ENTRY_BYTES}];", ".reg .b32 t, u, a, v, r;", ".reg .b64 p;",
             ".reg .b16 eh, el;", f".reg .f32 h<16>, l<{lows}>, fh, fl;", "mov.u32 t, %tid.x;", "shr.u32 u, t, 4;",
             "and.b32 t, t, 15;", "mov.u32 $0, pairs;", "mad.lo.u32 a, t, 8, $0;",
             f"mad.lo.u32 a, u, {_PAIR_ENTRY_BYTES}, a;", "mul.wide.u32 p, u, 4;", "add.u64 p, p, $1;"]
    lines += [f"ld.global.nc.f32 h{q}, [$1+{4 * q}];" for q in range(16)]
    lines += [f"ld.global.nc.f32 l{i}, [p+{4 * step * i}];" for i in range(lows)]  # level[u + 2·warps·i]
    for k in range(256 // step):
        high, low = divmod(step * k, 16)
        lines += [f"cvt.rn.{name}x2.f32 v, l{low // step}, h{high};",  # the low nibble's term to the high half
                  "mov.b32 {eh, el}, v;", f"cvt.f32.{name} fh, eh;", f"cvt.f32.{name} fl, el;",
                  f"sub.rn.f32 fh, h{high}, fh;", f"sub.rn.f32 fl, l{low // step}, fl;",
                  f"cvt.rn.{name}x2.f32 r, fl, fh;", f"st.shared.v2.b32 [a+{_PAIR_ENTRY_BYTES * step * k}], {{v, r}};"]
    lines.append("bar.sync 0;")
    return "{\n" + "\n".join(lines) + "\n}"


def _mma_step_constraints(n_tiles: int) -> str:
    """_mma_step_asm's operand constraints: the sums out and in, 4 + n_tiles + 3 addresses, the offset, the table."""
    acc = 4 * n_tiles
    return ",".join(["=f"] * acc + ["f"] * acc + ["l"] * (7 + n_tiles) + ["f", "r"])


def _mma_step_asm(blocks: int, n_tiles: int, dtype: torch.dtype, double_quant: bool = False) -> str:
    """PTX of one step of the mma path for one thread (lane = 4·g + t of a warp owning 16 weight rows): `blocks`
    consecutive quantization blocks of 64 elements. Operands: $0.. the 4·n_tiles float32 sums out (rows g, g + 8 x
    tokens 2t, 2t + 1 of each tile of 8 tokens, as mma's accumulator), then the same sums in, the addresses of the
    lane's 8 bytes of codes of row g and of row g + 8 in the first block, of their absmax, of x[token g + 8·tile][16t]
    in the first block (one per tile; tokens past M read token M - 1, their sums are not stored), the addresses of rows
    g's and g + 8's double-quantization scales (one each: a step's blocks share their group of 256), the dynamic
    map's, the mean offset (these four read only when double_quant: the absmax addresses are then of their 8-bit
    codes), the table's address. Each block: 4 k steps of two chained m16n8k16 mmas, the levels' high terms then
    their low terms (per lane and k step: bytes 2i, 2i + 1 of its 8 from rows g and g + 8, looked up in the pair
    table, against x elements 16t + 4i .. + 3: every lane of a column t reads the same elements of x, the k order
    the mma needs is the same for all rows), then the sums += the block's result × each row's absmax."""
    dtype_name = _MMA_TYPES[dtype]
    acc = 4 * n_tiles
    code_g, code_g8, absmax_g, absmax_g8 = (f"${2 * acc + i}" for i in range(4))
    x_ptrs = [f"${2 * acc + 4 + i}" for i in range(n_tiles)]
    scale_g, scale_g8, dynamic, offset = (f"${2 * acc + 4 + n_tiles + i}" for i in range(4))
    table = f"${2 * acc + 8 + n_tiles}"
    lines = [f".reg .b32 c<{4 * blocks}>, x<{8 * blocks * n_tiles}>, a<4>, e<4>, q, b;",
             f".reg .f32 s<{2 * blocks}>, d<{acc}>, z;", "mov.u32 b, %laneid;", "and.b32 b, b, 15;",
             "mov.f32 z, 0f00000000;", f"mad.lo.u32 b, b, 8, {table};"]
    if double_quant:
        lines += [".reg .b32 e;", ".reg .b64 w;", ".reg .f32 v, sg, sg8;", f"ld.global.nc.f32 sg, [{scale_g}];",
                  f"ld.global.nc.f32 sg8, [{scale_g8}];"]
    lines += [f"mov.f32 ${i}, ${acc + i};" for i in range(acc)]
    if blocks not in (1, 2, 4):
        raise ValueError(f"the mma step loads 1, 2 or 4 blocks' absmax at once, got {blocks}")
    vector = {1: "", 2: ".v2", 4: ".v4"}[blocks]
    for row, (address, scale) in enumerate(((absmax_g, "sg"), (absmax_g8, "sg8"))):  # each row's absmax: one load
        if double_quant:  # the step's 8-bit codes in one load; as bitsandbytes decodes: dynamic[code] x scale, rounded,
            lines.append(f"ld.global.nc.u{8 * blocks} e, [{address}];")  # + offset, rounded
            for j in range(blocks):
                lines += [f"bfe.u32 q, e, {8 * j}, 8;", "mul.wide.u32 w, q, 4;", f"add.u64 w, w, {dynamic};",
                          "ld.global.nc.f32 v, [w];", f"mul.rn.f32 v, v, {scale};",
                          f"add.rn.f32 s{2 * j + row}, v, {offset};"]
        else:
            registers = ", ".join(f"s{2 * j + row}" for j in range(blocks))
            lines.append(f"ld.global.nc{vector}.f32 {{{registers}}}, [{address}];" if vector
                         else f"ld.global.nc.f32 {registers}, [{address}];")
    for j in range(blocks):
        lines += [f"ld.global.nc.v2.b32 {{c{4 * j}, c{4 * j + 1}}}, [{code_g}+{32 * j}];",
                  f"ld.global.nc.v2.b32 {{c{4 * j + 2}, c{4 * j + 3}}}, [{code_g8}+{32 * j}];"]
        for n in range(n_tiles):
            first = 8 * (blocks * n + j)
            regs = [f"x{first + r}" for r in range(8)]
            lines += [f"ld.global.nc.v4.b32 {{{', '.join(regs[:4])}}}, [{x_ptrs[n]}+{128 * j}];",
                      f"ld.global.nc.v4.b32 {{{', '.join(regs[4:])}}}, [{x_ptrs[n]}+{128 * j + 16}];"]
    for j in range(blocks):
        for i in range(4):
            for reg, (row_word, byte) in enumerate(((0, 2 * i), (2, 2 * i), (0, 2 * i + 1), (2, 2 * i + 1))):
                word = f"c{4 * j + row_word + byte // 4}"  # row g: c[4j], c[4j + 1]; row g + 8: c[4j + 2], c[4j + 3]
                lines += [f"bfe.u32 q, {word}, {8 * (byte % 4)}, 8;", f"mad.lo.u32 q, q, {_PAIR_ENTRY_BYTES}, b;",
                          f"ld.shared.v2.b32 {{a{reg}, e{reg}}}, [q];"]
            for n in range(n_tiles):
                first = 8 * (blocks * n + j)
                d = ", ".join(f"d{4 * n + r}" for r in range(4))
                c = "z, z, z, z" if i == 0 else d  # each block's sum starts at 0
                for terms, into in (("a0, a1, a2, a3", c), ("e0, e1, e2, e3", d)):  # the levels' high terms, then low
                    lines.append(f"mma.sync.aligned.m16n8k16.row.col.f32.{dtype_name}.{dtype_name}.f32 {{{d}}}, "
                                 f"{{{terms}}}, {{x{first + 2 * i}, x{first + 2 * i + 1}}}, {{{into}}};")
        for n in range(n_tiles):
            lines += [f"fma.rn.f32 ${4 * n}, d{4 * n}, s{2 * j}, ${4 * n};",
                      f"fma.rn.f32 ${4 * n + 1}, d{4 * n + 1}, s{2 * j}, ${4 * n + 1};",
                      f"fma.rn.f32 ${4 * n + 2}, d{4 * n + 2}, s{2 * j + 1}, ${4 * n + 2};",
                      f"fma.rn.f32 ${4 * n + 3}, d{4 * n + 3}, s{2 * j + 1}, ${4 * n + 3};"]
    return "{\n" + "\n".join(lines) + "\n}"


@triton.jit
def _two_terms(level, dtype):
    """level ≈ its high term (rounded to dtype) + its low term (level - high, rounded to dtype), summed in float32
    (exact), as the pair table holds it."""
    high = level.to(dtype).to(tl.float32)
    return high + (level - high).to(dtype).to(tl.float32)


@triton.jit
def _mma_fallback_sums(codes_ptr, absmax_ptr, scales_ptr, offset_ptr, dynamic_ptr, table_ptr, x_ptr, row, token,
                       stride_codes, stride_xm, K, first_block, BLOCKS_PER_STEP: tl.constexpr,
                       DOUBLE_QUANT: tl.constexpr, DQ_BLOCKSIZE: tl.constexpr):
    """What STEP_ASM adds to one of a lane's sums, in plain Triton (Triton's interpreter): Σ over the step's blocks of
    absmax · Σ level (as its two terms of x's dtype) · x for weight rows `row` and tokens `token` [THREADS]."""
    block = first_block[:, None] + tl.arange(0, BLOCKS_PER_STEP)[None, :]  # [THREADS, BPS]
    byte = block[:, :, None] * 32 + tl.arange(0, 32)[None, None, :]  # [THREADS, BPS, 32]
    packed = tl.load(codes_ptr + row[:, None, None] * stride_codes + byte).to(tl.int32)
    high = _two_terms(tl.load(table_ptr + (packed >> 4)), x_ptr.dtype.element_ty)
    low = _two_terms(tl.load(table_ptr + (packed & 15)), x_ptr.dtype.element_ty)
    x_even = tl.load(x_ptr + token[:, None, None] * stride_xm + 2 * byte).to(tl.float32)
    x_odd = tl.load(x_ptr + token[:, None, None] * stride_xm + 2 * byte + 1).to(tl.float32)
    absmax = block_absmax(absmax_ptr, scales_ptr, offset_ptr, dynamic_ptr, row[:, None] * (K // 64) + block,
                          block >= 0, DOUBLE_QUANT, DQ_BLOCKSIZE)  # [THREADS, BPS]
    return tl.sum(tl.sum(high * x_even + low * x_odd, axis=2) * absmax, axis=1)


@triton.jit
def _mma_fallback_tile(codes_ptr, absmax_ptr, scales_ptr, offset_ptr, dynamic_ptr, table_ptr, x_ptr, row_g, row_g8,
                       first_token, M, stride_codes, stride_xm, K, first_block, BLOCKS_PER_STEP: tl.constexpr,
                       DOUBLE_QUANT: tl.constexpr, DQ_BLOCKSIZE: tl.constexpr):
    """A lane's four sums of one tile of tokens (first_token = 2t + 8·tile [THREADS]), as STEP_ASM keeps them: rows g,
    g + 8 x tokens first_token, first_token + 1 (tokens past M read token M - 1)."""
    even, odd = tl.minimum(first_token, M - 1), tl.minimum(first_token + 1, M - 1)
    return (_mma_fallback_sums(codes_ptr, absmax_ptr, scales_ptr, offset_ptr, dynamic_ptr, table_ptr, x_ptr, row_g,
                               even, stride_codes, stride_xm, K, first_block, BLOCKS_PER_STEP, DOUBLE_QUANT,
                               DQ_BLOCKSIZE),
            _mma_fallback_sums(codes_ptr, absmax_ptr, scales_ptr, offset_ptr, dynamic_ptr, table_ptr, x_ptr, row_g,
                               odd, stride_codes, stride_xm, K, first_block, BLOCKS_PER_STEP, DOUBLE_QUANT,
                               DQ_BLOCKSIZE),
            _mma_fallback_sums(codes_ptr, absmax_ptr, scales_ptr, offset_ptr, dynamic_ptr, table_ptr, x_ptr, row_g8,
                               even, stride_codes, stride_xm, K, first_block, BLOCKS_PER_STEP, DOUBLE_QUANT,
                               DQ_BLOCKSIZE),
            _mma_fallback_sums(codes_ptr, absmax_ptr, scales_ptr, offset_ptr, dynamic_ptr, table_ptr, x_ptr, row_g8,
                               odd, stride_codes, stride_xm, K, first_block, BLOCKS_PER_STEP, DOUBLE_QUANT,
                               DQ_BLOCKSIZE))


@triton.jit
def _nf4_mma_kernel(x_ptr, codes_ptr, absmax_ptr, scales_ptr, offset_ptr, table_ptr, dynamic_ptr, out_ptr, M, N, K,
                    stride_xm, stride_codes, stride_om, DOUBLE_QUANT: tl.constexpr, DQ_BLOCKSIZE: tl.constexpr,
                    ROW_GROUPS: tl.constexpr,
                    K_SLICES: tl.constexpr, BLOCKS_PER_STEP: tl.constexpr, N_TILES: tl.constexpr,
                    TABLE_SETUP_ASM: tl.constexpr, STEP_ASM: tl.constexpr, STEP_CONSTRAINTS: tl.constexpr):
    """out[M, N] = x[M, K] · ŵ[N, K]ᵀ, blocks of 64: program (pid_0, pid_1) owns ROW_GROUPS groups of 16 weight rows
    and tokens [16·pid_1, + 8·N_TILES); each group's K is cut into K_SLICES contiguous slices, one warp each (warp w:
    group w // K_SLICES, slice w % K_SLICES). Tensors of one element per thread carry each lane's addresses into
    STEP_ASM (_mma_step_asm), which keeps the lane's mma accumulators: rows g, g + 8 x tokens 2t, 2t + 1 (+ 8 in the
    second tile) of its group and slice; the slices' sums are added at the end. Under Triton's interpreter (STEP_ASM
    "") _mma_fallback_tile gives each lane the same sums with plain loads."""
    THREADS: tl.constexpr = 32 * ROW_GROUPS * K_SLICES
    thread = tl.arange(0, THREADS)  # [THREADS]: one element a thread
    lane = thread % 32
    g = lane // 4
    t = lane % 4
    first_token = tl.program_id(1) * 16  # tokens [16·pid_1, + 8·N_TILES)
    x_ptr += first_token * stride_xm
    out_ptr += first_token * stride_om
    M -= first_token
    group = tl.program_id(0) * ROW_GROUPS + thread // (32 * K_SLICES)
    k_slice = (thread // 32) % K_SLICES
    row_g = tl.minimum(group * 16 + g, N - 1)  # rows past N read row N - 1; their sums are not stored
    row_g8 = tl.minimum(group * 16 + g + 8, N - 1)
    blocks = K // 64
    slice_blocks = blocks // K_SLICES
    first_block = k_slice * slice_blocks  # [THREADS]
    code_g = codes_ptr + row_g * stride_codes + first_block * 32 + 8 * t
    code_g8 = codes_ptr + row_g8 * stride_codes + first_block * 32 + 8 * t
    absmax_g = absmax_ptr + row_g * blocks + first_block
    absmax_g8 = absmax_ptr + row_g8 * blocks + first_block
    x_g = x_ptr + tl.minimum(g, M - 1) * stride_xm + first_block * 64 + 16 * t  # tokens past M: not stored
    x_g8 = x_ptr + tl.minimum(g + 8, M - 1) * stride_xm + first_block * 64 + 16 * t
    table = 0
    if STEP_ASM != "":
        table = tl.inline_asm_elementwise(TABLE_SETUP_ASM, "=r,l", [table_ptr], dtype=tl.int32, is_pure=False, pack=1)
    offset = tl.load(offset_ptr)
    acc0 = tl.zeros((THREADS,), dtype=tl.float32)
    acc1 = tl.zeros((THREADS,), dtype=tl.float32)
    acc2 = tl.zeros((THREADS,), dtype=tl.float32)
    acc3 = tl.zeros((THREADS,), dtype=tl.float32)
    acc4 = tl.zeros((THREADS,), dtype=tl.float32)
    acc5 = tl.zeros((THREADS,), dtype=tl.float32)
    acc6 = tl.zeros((THREADS,), dtype=tl.float32)
    acc7 = tl.zeros((THREADS,), dtype=tl.float32)
    for step in range(0, slice_blocks, BLOCKS_PER_STEP):
        if STEP_ASM == "":
            s0, s1, s2, s3 = _mma_fallback_tile(codes_ptr, absmax_ptr, scales_ptr, offset_ptr, dynamic_ptr, table_ptr,
                                                x_ptr, row_g, row_g8, 2 * t, M, stride_codes, stride_xm, K,
                                                first_block + step, BLOCKS_PER_STEP, DOUBLE_QUANT, DQ_BLOCKSIZE)
            acc0, acc1, acc2, acc3 = acc0 + s0, acc1 + s1, acc2 + s2, acc3 + s3
            if N_TILES == 2:
                s4, s5, s6, s7 = _mma_fallback_tile(codes_ptr, absmax_ptr, scales_ptr, offset_ptr, dynamic_ptr,
                                                    table_ptr, x_ptr, row_g, row_g8, 2 * t + 8, M, stride_codes,
                                                    stride_xm, K, first_block + step, BLOCKS_PER_STEP, DOUBLE_QUANT,
                                                    DQ_BLOCKSIZE)
                acc4, acc5, acc6, acc7 = acc4 + s4, acc5 + s5, acc6 + s6, acc7 + s7
        else:
            # the step's operands after the sums (_mma_step_asm's order); its blocks share one group of DQ_BLOCKSIZE
            # (a row's blocks and the step are multiples of the step)
            codes_g, codes_g8 = (code_g + step * 32).to(tl.int64), (code_g8 + step * 32).to(tl.int64)
            step_absmax_g, step_absmax_g8 = (absmax_g + step).to(tl.int64), (absmax_g8 + step).to(tl.int64)
            x_tile0, x_tile1 = (x_g + step * 64).to(tl.int64), (x_g8 + step * 64).to(tl.int64)
            dq_scale_g = (scales_ptr + (row_g * blocks + first_block + step) // DQ_BLOCKSIZE).to(tl.int64)
            dq_scale_g8 = (scales_ptr + (row_g8 * blocks + first_block + step) // DQ_BLOCKSIZE).to(tl.int64)
            dynamic = dynamic_ptr.to(tl.int64) + 0 * thread
            if N_TILES == 1:
                acc0, acc1, acc2, acc3 = tl.inline_asm_elementwise(
                    STEP_ASM, STEP_CONSTRAINTS,
                    [acc0, acc1, acc2, acc3, codes_g, codes_g8, step_absmax_g, step_absmax_g8, x_tile0, dq_scale_g,
                     dq_scale_g8, dynamic, offset + 0.0 * acc0, table + 0 * thread],
                    dtype=(tl.float32,) * 4, is_pure=True, pack=1)
            else:
                acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7 = tl.inline_asm_elementwise(
                    STEP_ASM, STEP_CONSTRAINTS,
                    [acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, codes_g, codes_g8, step_absmax_g, step_absmax_g8,
                     x_tile0, x_tile1, dq_scale_g, dq_scale_g8, dynamic, offset + 0.0 * acc0, table + 0 * thread],
                    dtype=(tl.float32,) * 8, is_pure=True, pack=1)
    out_lane = tl.arange(0, 32)[None, :]  # [1, 32]
    out_group = tl.program_id(0) * ROW_GROUPS + tl.arange(0, ROW_GROUPS)[:, None]  # [ROW_GROUPS, 1]
    out_row = out_group * 16 + out_lane // 4  # [ROW_GROUPS, 32]: row g of each lane
    out_token = 2 * (out_lane % 4)
    _mma_store_tile(out_ptr, acc0, acc1, acc2, acc3, out_row, out_token, M, N, stride_om, ROW_GROUPS, K_SLICES)
    if N_TILES == 2:
        _mma_store_tile(out_ptr, acc4, acc5, acc6, acc7, out_row, out_token + 8, M, N, stride_om, ROW_GROUPS,
                        K_SLICES)


@triton.jit
def _mma_store(out_ptr, acc, rows, tokens, M, N, stride_om, ROW_GROUPS: tl.constexpr, K_SLICES: tl.constexpr):
    """Sum one accumulator [THREADS] over the K slices of each row group and store it at out[tokens, rows]."""
    total = tl.sum(tl.reshape(acc, (ROW_GROUPS, K_SLICES, 32)), axis=1)  # [ROW_GROUPS, 32]
    tl.store(out_ptr + tokens * stride_om + rows, total.to(out_ptr.dtype.element_ty), mask=(rows < N) & (tokens < M))


@triton.jit
def _mma_store_tile(out_ptr, acc0, acc1, acc2, acc3, rows, tokens, M, N, stride_om, ROW_GROUPS: tl.constexpr,
                    K_SLICES: tl.constexpr):
    """Store a tile's four sums of each lane: rows g, g + 8 x tokens `tokens`, `tokens` + 1 ([ROW_GROUPS, 32])."""
    _mma_store(out_ptr, acc0, rows, tokens, M, N, stride_om, ROW_GROUPS, K_SLICES)
    _mma_store(out_ptr, acc1, rows, tokens + 1, M, N, stride_om, ROW_GROUPS, K_SLICES)
    _mma_store(out_ptr, acc2, rows + 8, tokens, M, N, stride_om, ROW_GROUPS, K_SLICES)
    _mma_store(out_ptr, acc3, rows + 8, tokens + 1, M, N, stride_om, ROW_GROUPS, K_SLICES)


# ----------------------------------------------------------------------------------------------- host side


class Tile(NamedTuple):
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    split_k: int = 1  # programs sharing one output tile, each over 1 / split_k of K (_split_k_epilogue)
    tail_round: int = 0  # split_k > 1: 0 splits every tile; n splits only the tiles past the last whole round of n
    #                      programs an SM (the grid's tail, which would otherwise leave SMs idle)
    stream_k: int = 0  # chunk tiles, split_k = 2: n programs an SM (one a tile if fewer) share all tiles' steps equally
    prefetch: bool = False  # word path: each step loads the next step's codes, x and absmax before its own sums
    chunks: bool = False  # word path: [rows, chunks of 32 elements] tiles, 16-byte loads along a row (_chunks_load)


# sm_90 candidates. One token (it stays here: the mma path, whose levels in one term of x's dtype failed the contract's
# tolerance on 32 of 3000 one-token draws, passes all with two terms but took 84.5 µs at 28672 x 8192 against the word
# path's 74.6 on the H100, 2026-12-06; bench/nf4_tolerance.py counts the failures): the problem is streaming N·K/2 bytes
# of codes once; a program takes 8-128 rows, 16 bytes of codes per thread per row per step, rows wrapping so that a
# thread reuses its decoded x for 2-16 rows (Triton lays [blocks, rows, words] tiles out that way). Per weight element,
# in the SASS of these tiles: one FFMA, half an 8-byte shared load, an extract and an address per byte, 3.3-4.3
# instructions in all, the fewer rows a thread the more (results/sm_90/nf4_sass.json; the 16-entry table in L1 took
# ~7.1, Nsight Compute, H100, 2026-12-05); the byte table's 32 KB of shared memory caps a program at 6 per SM. The dot
# path (2-16 tokens before the mma path took them; now its fallback): 16-token tensor-core dots (wgmma) on 64-256-row
# tiles, each thread decoding whole words to their 8 weights, which Triton stores to the dot's shared operand with
# 16-byte stores: 4.0-4.6 SASS instructions per weight element (4.3-5.0 double-quantized) and two barriers a step
# (results/sm_90/nf4_sass.json). The byte-tile decode it replaced (16-entry table in L1, [rows, blocks, bytes] tiles)
# took 9.0-14.6 and 0.55-1.5 barriers per element, its operand converted in chunks with a barrier each. 32-row tiles
# fall back to mma.sync at ~7 and were dropped; so were 2-stage tiles (~6: the pipeliner's buffers cost more than they
# hide, below). Weights of few rows (4096 x 4096: 64-256 programs over 132 SMs) leave SMs idle and the rest
# latency-bound: every tile also comes split over K (_SPLITS), kept only while the grid stays under
# _SPLIT_PROGRAMS_PER_SM programs per SM. On the H200 (2026-12-04) split-K took 7-20% off the 2-16-token path on the
# three smaller weights. Software pipelining (num_stages > 1) is what made the 2-16-token path slow: at 16 tokens on
# 28672 x 8192, Nsight Compute showed the L1/shared-memory pipe 97% busy with 3.5% of issue slots used, and probe
# kernels of the same decode-then-dot took 1.3-1.7 ms with 2-3 stages, 0.31-0.41 ms with one (their shared memory fell
# from 50-230 KB to 4-8 KB: the pipeliner buffers the codes, gathers and absmax there for the decode to read back); the
# dense bf16 operand, loaded straight into the dot, pipelines well (0.12 ms). One-stage tiles lead the candidates.
# Triton pipelines a plain range loop only when it holds a dot, so num_stages never reaches the word path; forced with
# tl.range(num_stages=2-4) its tiles ran 1.3-1.7x slower on the H100 (2026-12-06, commit 88a8267: each step reads its
# operands back from shared memory). The prefetching tiles overlap a step's memory latency with the previous step's sums
# in registers instead (+0.1-0.4 instructions per element, no spills): the autotuner's choice at 4096², 8192² and 28672
# x 8192 on the H100 (2026-12-06). Until commit 7c2afb3 ptxas moved some of their reads after the sums (the chunk tiles'
# and the 64 x 256 word tile's: 96 registers, 167 once the reads stayed ahead), so those measured no prefetching; with
# the reads ahead one token ran 1.32-1.90x bitsandbytes where it had run 1.27-1.84x (graph replays; 10.0 µs against 11.2
# at 4096², unchanged at 28672 x 8192: 59.9 against 59.4; L2 flushed by reading; H100, 2026-12-06). Every one-token
# candidate keeps its loop free of barriers (no layout conversion through shared memory: the absmax comes by inline
# assembly); tiles of 8 or more blocks a step (BLOCK_K >= 512 at 2 warps, 1024 at 4) convert their codes every step and
# were dropped, and so were prefetching tiles that need over 200 registers, and tiles loading two steps ahead (168-176
# registers, the 128-row tile one program an SM: slower than one step ahead on every one-token shape, H100, 2026-12-06,
# commit ed1f74c). Tiles of [rows, elements] that read each byte and absmax per element ran 2-6x slower than these in
# every sweep and were dropped.
_GEMV_TILES = [Tile(32, 256, 2, 1), Tile(64, 256, 4, 1), Tile(64, 512, 4, 1), Tile(64, 256, 2, 1), Tile(128, 256, 8, 1),
               Tile(128, 256, 4, 1), Tile(16, 256, 2, 1), Tile(32, 256, 4, 1),
               *(Tile(n, k, w, 1, prefetch=True)
                 for n, k, w in ((32, 256, 2), (64, 256, 4), (128, 256, 8), (16, 256, 2)))]
# Chunk tiles, for one token of x and codes whose rows start 16-byte aligned (blocks a multiple of 32): each element of
# a [rows, chunks] tile is 16 bytes of one row's codes (32 elements), so a warp's load reads up to 512 contiguous bytes
# of a row where the word tiles read 32 bytes from each of 16 rows. From a probe on the H100 (2026-12-06, one token,
# bf16, results/h100/probes/2026-12-06-nf4-chunk-probe.json): at 28672 x 8192 the best took 69.2 µs against 74.6 for the
# word path, at 8192² 26.8 against 28.4; the same loads without the decode streamed at most 2200 GB/s (60 µs; all three
# with L2 flushed by writing). Autotuned beside the word tiles (H100, 2026-12-06, commit c75e544) every one-token shape
# ran 11-15% faster: 11.9 / 19.7 / 24.4 / 66.5 µs at 4096² / 11008 x 4096 / 8192² / 28672 x 8192 (CUDA-graph replays, L2
# flushed by writing; 11.2 / 18.4 / 21.9 / 59.4 with the read flush, commit 8dba0ee); the autotuner's choice, where a
# probe read it (4096², 8192², 28672 x 8192 double-quantized), was a chunk tile of 16-32 rows and 1024 elements a step.
# Cache hints on their loads (L1::no_allocate, L1::evict_first, L2::256B, L2::evict_first; on codes and x or on codes
# alone) gained nothing (results/h100/probes/2026-12-06-nf4-hint-probe.json, ...-codes-hint-probe.json).
_CHUNK_TILES = [Tile(32, 1024, 4, 1, chunks=True), Tile(64, 1024, 8, 1, prefetch=True, chunks=True),
                Tile(16, 1024, 4, 1, prefetch=True, chunks=True), Tile(32, 1024, 8, 1, prefetch=True, chunks=True),
                Tile(64, 512, 8, 1, chunks=True), Tile(16, 1024, 8, 1, chunks=True)]
# Chunk tiles that split only the grid's tail in two: the tiles past the last whole round of tail_round programs an
# SM, a round being what each tile's registers and the byte table's 32 KB let an SM hold (plain / double-quantized,
# from results/sm_90/nf4_sass.json: 4 / 3, 1, 4, 2, 3 / 2 and 5 / 4 for the tiles above, in order, as compiled before
# the dynamic-map load was unpredicated; since then the double-quantized tiles take about the plain ones' registers, the
# 32 x 1024 4-warp one 128, so 4 an SM, and the smaller rounds stay candidates). At 28672 x 8192,
# one token, 1792 tiles of 16 rows over 4 x 132 programs leave a last round of 208 tiles with most of the SMs idle;
# GB/s there sat 5% below the line through N = 25344 and 33792, whose tiles fill whole rounds (H100, 2026-12-06,
# results/h100/probes/2026-12-06-nf4-tail-probe.json). Split in two, those tiles fill the round with half-K programs;
# splitting every tile instead ran slower (each program's table fill and first load then come twice as often). Probed
# on the H100 (c4dd801, results/h100/probes/2026-12-06-nf4-tail-split-probe.json): 28672 x 8192 double-quantized, the
# 32 x 1024 4-warp tile took 58.7 µs split at 3 an SM against 67.3 whole-K, the autotuner's choice; plain, and at the
# three smaller weights, no tail split beat the best whole-K tile (57.9 against 61.0 at 28672 x 8192). Stream-K (below)
# beats the tail split wherever it won, but removing it (commit 294db79, reverted: split programs back on the grid's
# third index) slowed the split-every-tile candidates' best at 4096² double-quantized from 12.0 to 12.5 µs (H100,
# 2026-12-07, results/h100/probes/2026-12-07-nf4-tail-split-removal-probe.json), so the kernel keeps its form.
_CHUNK_ROUNDS = ((4, 3), (1,), (4,), (2,), (3, 2), (5, 4))
_TAIL_SPLIT_TILES = [tile._replace(split_k=2, tail_round=n)
                     for tile, rounds in zip(_CHUNK_TILES, _CHUNK_ROUNDS) for n in rounds]
# Stream-K chunk tiles: a round's programs (n an SM, as above) share all tiles' steps equally, each tile cut in two at
# most and its pieces added by the split-K epilogue, so no round is left part-full and no program fills the byte table
# more than once (the tail split above balances only the last round's tiles, and each split program fills its own).
# Probed on the H100 (d2a16fc, results/h100/probes/2026-12-06-nf4-stream-k-probe.json, graph replays): 28672 x 8192
# double-quantized, the 32 x 1024 4-warp tile at 3 an SM took 59.6 µs against 61.1 tail-split and 63.7 whole-K, the
# autotuner's choice; plain, stream-K brought that tile from 62.6 to 60.4 µs, level with the best whole-K tile (60.3),
# and slowed the prefetching ones (each piece of a tile starts its prefetch again). Double-quantized, the 32 x 1024
# 8-warp prefetching tile takes 254 registers in its stream-K form (one program an SM, not 2): it runs in two waves.
# Walking a program's share as one loop over its steps (the next tile's first step read during a tile's last; commit
# 294db79, reverted) sped most stream-K tiles, by up to 31%, but slowed the best, the 32 x 1024 4-warp tile at 3 an SM,
# from 59.7 to 60.6 µs (28672 x 8192 double-quantized; H100, 2026-12-07,
# results/h100/probes/2026-12-07-nf4-stream-k-one-loop-probe.json); in the same run stream-K tiles of 4-16 rows and
# 2048-8192-element steps, each program reading a contiguous run of whole rows, took 65.9 µs at best.
_STREAM_K_TILES = [tile._replace(split_k=2, stream_k=n)
                   for tile, rounds in zip(_CHUNK_TILES, _CHUNK_ROUNDS) for n in rounds]
_DOT_TILES = [Tile(128, 128, 8, 1), Tile(64, 128, 4, 1), Tile(64, 256, 4, 1), Tile(128, 128, 4, 1), Tile(64, 64, 4, 1),
              Tile(128, 64, 4, 1), Tile(256, 64, 8, 1), Tile(128, 256, 8, 1)]
_SPLITS = (2, 4, 8)
_SPLIT_PROGRAMS_PER_SM = 4
# Candidate families: "words" (one token), "chunks" (one token that chunk tiles may read: the word tiles and those),
# "dot" (2+ tokens the mma kernel does not take). A family's first tile runs small weights without autotuning.
_FAMILIES = {"words": _GEMV_TILES, "chunks": [*_GEMV_TILES, *_CHUNK_TILES], "dot": _DOT_TILES}
_CANDIDATES = {family: [t._replace(split_k=s) for t in tiles for s in (1, *_SPLITS)]
               + (_TAIL_SPLIT_TILES + _STREAM_K_TILES if family == "chunks" else [])
               for family, tiles in _FAMILIES.items()}
# The interpreter splits K in two where K holds two steps, so both epilogues are checked on the CPU.
_INTERPRETER_TILES = {False: Tile(4, 128, 4, 1, split_k=2), True: Tile(16, 64, 4, 1, split_k=2)}
_FLOAT32_DOT_TILE = Tile(32, 64, 4, 2)  # IEEE fp32 dots on CUDA cores: small tiles
_AUTOTUNE_MIN_WEIGHT = 1 << 22  # N·K below which the first candidate runs instead of autotuning (verification shapes)
_DOT_BLOCK_M = 16
_PAIR_FORMATS = {torch.bfloat16: "bf16", torch.float16: "fp16"}  # x dtypes the word path reads as 32-bit pairs
_INTERPRETER_SMS = 2
_PINNED: dict[str, Tile] = {}


class MmaTile(NamedTuple):
    """A program of the mma path (_nf4_mma_kernel): row_groups x k_slices warps."""

    row_groups: int  # groups of 16 weight rows
    k_slices: int  # warps sharing each group's K, contiguous slices summed at the end
    blocks_per_step: int  # quantization blocks of 64 a warp loads before their sums


# 2-16 tokens (and more, 16 a program) of bf16/fp16 x, blocks of 64: the mma path, per element ~3.1-3.3 SASS
# instructions at up to 8 tokens, ~4.5-5.4 at 16 (two mmas a product since the levels' two terms: 2.0-2.4 and 2.4-2.9
# with one), no barrier in the loop (results/sm_90/nf4_sass.json). Candidates from a probe on the H100
# (2026-12-06, every shape of the benchmark, beside the dot path): the best were 1x4 and 4x1 warps loading 4 blocks a
# step; fewer blocks a step keep K's that the larger steps do not divide.
_MMA_TILES = [MmaTile(1, 4, 4), MmaTile(4, 1, 4), MmaTile(2, 4, 4), MmaTile(2, 2, 4), MmaTile(2, 2, 2),
              MmaTile(1, 4, 2), MmaTile(4, 1, 2), MmaTile(4, 1, 1)]
_INTERPRETER_MMA_TILE = MmaTile(2, 2, 1)  # two row groups and two K slices: the whole shell under the interpreter


def pin(tile: Tile | MmaTile | None = None) -> None:
    """Launch every call with `tile` instead of the autotuned or default one (None restores them): a Tile pins the
    word, byte and dot paths' kernel, an MmaTile the mma path (for any number of tokens)."""
    if isinstance(tile, Tile) and tile.stream_k and not (tile.chunks and tile.split_k == 2 and not tile.tail_round):
        raise ValueError(f"a stream-K tile reads chunks and cuts a tile in two at most: it needs chunks=True, "
                         f"split_k=2 and tail_round=0, got {tile}")
    if tile is None:
        _PINNED.pop("tile", None)
    else:
        _PINNED["tile"] = tile


def _num_sms(device: torch.device) -> int:
    return _INTERPRETER_SMS if _INTERPRET else torch.cuda.get_device_properties(device).multi_processor_count


def programs_along_rows(N: int, block_n: int, split_k: int, tail_round: int, sms: int, stream_k: int = 0) -> int:
    """The grid's programs along the weight rows: one a tile of block_n rows, and split_k - 1 more for each tile that
    splits K: every tile (tail_round 0), or those past the last whole round of sms x tail_round programs. The kernel
    reads how many tiles split from this count. Stream-K: sms x stream_k programs, or one a tile if fewer."""
    tiles = cdiv(N, block_n)
    if stream_k:
        return min(tiles, sms * stream_k)
    split_tiles = tiles if tail_round == 0 else tiles % (sms * tail_round)
    return tiles + split_tiles * (split_k - 1)


def _split_allowed(block_n: int, block_k: int, split_k: int, tail_round: int, N: int, K: int, tokens: int,
                   sms: int, stream_k: int = 0) -> bool:
    """Whether a tile may split K split_k ways: unsplit always; split where every split gets a whole step of K and,
    splitting every tile, while the grid stays under _SPLIT_PROGRAMS_PER_SM programs per SM; stream-K where the tiles
    outnumber its programs and do not fill whole rounds of them."""
    if stream_k:
        return cdiv(N, block_n) > sms * stream_k and cdiv(N, block_n) % (sms * stream_k) != 0
    programs = programs_along_rows(N, block_n, split_k, tail_round, sms) * tokens
    return split_k == 1 or (K >= split_k * block_k and (tail_round > 0 or programs <= _SPLIT_PROGRAMS_PER_SM * sms))


def tile_constexprs(tile: Tile, levels: str) -> dict:
    """The tile's block sizes, and the fill of the byte table with `levels` (_level_format) for its thread count (used
    by the word-decoding paths)."""
    return {"BLOCK_N": tile.block_n, "BLOCK_K": tile.block_k, "SPLIT_K": tile.split_k, "TAIL_ROUND": tile.tail_round,
            "STREAM_K": tile.stream_k, "PREFETCH": tile.prefetch, "CHUNKS": tile.chunks,
            "TABLE_SETUP_ASM": "" if _INTERPRET else _table_setup_asm(32 * tile.num_warps, levels)}


def _config(tile: Tile, levels: str) -> triton.Config:
    return triton.Config(tile_constexprs(tile, levels), num_warps=tile.num_warps, num_stages=tile.num_stages)


def _prune(configs, named_args, **kwargs):
    """Splits of K only where _split_allowed. Every step fits the blocks: both powers of two, a step holds whole
    blocks or lies in one."""
    N, K, M = named_args["N"], named_args["K"], named_args["M"]
    tokens = cdiv(M, kwargs["BLOCK_M"])
    sms = _num_sms(named_args["out_ptr"].device)
    return [c for c in configs if _split_allowed(c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.kwargs["SPLIT_K"],
                                                 c.kwargs["TAIL_ROUND"], N, K, tokens, sms, c.kwargs["STREAM_K"])]


_CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES = 1  # CUfunction_attribute values of the CUDA driver API
_CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8


def _opt_in_beside_static_table(module, function: int, name: str, metadata_group, hash) -> None:
    """Triton's kernel-load hook: let an NF4 matmul kernel take the device's whole shared memory beside its static byte
    table. Triton opts a kernel in above 48 KiB only when its own (dynamic) share exceeds 48 KiB; the table (declared in
    PTX, static, 32 KiB) is not counted, so a dynamic share of 16-48 KiB would fail to launch ("invalid argument")."""
    if name != _nf4_matmul_kernel.__name__:
        return
    libcuda = ctypes.CDLL("libcuda.so.1")
    driver = triton.runtime.driver.active
    opt_in_bytes = driver.utils.get_device_properties(driver.get_current_device())["max_shared_mem"]
    static_bytes = ctypes.c_int()
    _cuda_check(libcuda.cuFuncGetAttribute(ctypes.byref(static_bytes), _CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES,
                                           ctypes.c_void_p(function)), "cuFuncGetAttribute", name)
    _cuda_check(libcuda.cuFuncSetAttribute(ctypes.c_void_p(function), _CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                           opt_in_bytes - static_bytes.value), "cuFuncSetAttribute", name)


def _cuda_check(code: int, call: str, kernel: str) -> None:
    if code != 0:
        raise RuntimeError(f"{call} failed with CUresult {code} for kernel {kernel}")


if not _INTERPRET:
    triton.knobs.runtime.kernel_load_end_hook.add(_opt_in_beside_static_table)

_AUTOTUNED = {(family, levels): autotune([_config(t, levels) for t in tiles], ["N", "K", "M"],
                                         prune_configs_by={"early_config_prune": _prune})(_nf4_matmul_kernel)
              for family, tiles in _CANDIDATES.items() for levels in (("f32",) if family == "dot" else _TABLE_LAYOUT)}


def _family(use_dot: bool, chunks: bool) -> str:
    return "dot" if use_dot else "chunks" if chunks else "words"


def _fixed_tile(family: str, N: int, K: int, dtype: torch.dtype, blocksize: int) -> Tile | None:
    if isinstance(_PINNED.get("tile"), Tile):
        tile = _PINNED["tile"]
        if tile.chunks and family != "chunks":
            raise ValueError(f"pinned {tile} reads codes in 16-byte chunks: it needs one bf16/fp16 token, x and every "
                             f"row of codes 16-byte aligned and blocks a multiple of 32 (got blocksize {blocksize})")
    elif _INTERPRET:
        tile = _INTERPRETER_TILES[family == "dot"]
    elif family == "dot" and dtype == torch.float32:
        tile = _FLOAT32_DOT_TILE
    elif N * K < _AUTOTUNE_MIN_WEIGHT:
        tile = _CANDIDATES[family][0]
    else:
        return None
    return tile


def path_constexprs(use_dot: bool, pairs: bool, dtype: torch.dtype, blocksize: int, double_quant: bool,
                    levels: str) -> dict:
    """The kernel's constexprs other than the tile's: which path, x's pair format, the assembly (the byte table's
    `levels`: _level_format), the dot precision."""
    return {"BLOCKSIZE": blocksize, "DOUBLE_QUANT": double_quant, "DQ_BLOCKSIZE": DQ_BLOCKSIZE,
            "PATH": "dot" if use_dot else "words" if pairs else "bytes",
            "X_PAIRS": _PAIR_FORMATS[dtype] if pairs else "none",
            "WORD_ASM": "" if _INTERPRET else _WORD_WEIGHTS_ASM.get(dtype, "") if use_dot
            else _WORD_DOT_ASM[levels] if pairs else "",
            "ABSMAX_ASM": "" if _INTERPRET or not (use_dot or pairs) else _ABSMAX_ASM[double_quant],
            "CHUNK_ASM": "" if _INTERPRET or use_dot or not pairs else _CHUNK_LOAD_ASM,
            "DOT_PRECISION": "ieee" if dtype == torch.float32 else "tf32", "BLOCK_M": _DOT_BLOCK_M if use_dot else 1}


class _Plan(NamedTuple):
    """Everything about a launch that depends only on shapes, dtypes and the pinned tile, worked out once."""

    family: str  # of candidate tiles (_FAMILIES)
    levels: str  # the byte table's (_level_format)
    tokens: int  # programs along the tokens: blocks of _DOT_BLOCK_M tokens (dot) or single tokens
    tile: Tile | None  # None: autotuned among _CANDIDATES[family]
    splits: int  # rows of the split-K partial buffer: the largest split a candidate may take here
    output_tiles: int  # arrival counters the largest split needs
    constexprs: dict


@functools.lru_cache(maxsize=512)
def _plan(N: int, K: int, M: int, dtype: torch.dtype, blocksize: int, double_quant: bool, pairs: bool, chunks: bool,
          device: torch.device, pinned: Tile | None) -> _Plan:
    """chunks: x and the codes start 16-byte aligned. Chunk tiles are candidates where, besides, one token comes as
    pairs and blocks are a multiple of 32: then every row of codes (K / 2 bytes, K a multiple of the block) starts
    aligned."""
    use_dot = M > 1
    family = _family(use_dot, pairs and chunks and blocksize % 32 == 0)
    tokens = cdiv(M, _DOT_BLOCK_M) if use_dot else M
    sms = _num_sms(device)
    tile = _fixed_tile(family, N, K, dtype, blocksize)
    if tile is not None and not _split_allowed(tile.block_n, tile.block_k, tile.split_k, tile.tail_round, N, K,
                                               tokens, sms, tile.stream_k):
        tile = tile._replace(split_k=1, stream_k=0)
    allowed = [t for t in (_CANDIDATES[family] if tile is None else [tile])
               if _split_allowed(t.block_n, t.block_k, t.split_k, t.tail_round, N, K, tokens, sms, t.stream_k)]
    splits = max(t.split_k for t in allowed)
    output_tiles = max((cdiv(N, t.block_n) for t in allowed if t.split_k > 1), default=0) * tokens
    levels = _level_format(use_dot, pairs, dtype, N * K)
    constexprs = path_constexprs(use_dot, pairs, dtype, blocksize, double_quant, levels)
    if tile is not None:
        constexprs |= tile_constexprs(tile, levels) | {"num_warps": tile.num_warps, "num_stages": tile.num_stages}
    return _Plan(family, levels, tokens, tile, splits, output_tiles, constexprs)


_PLACEHOLDERS: dict[torch.device, torch.Tensor] = {}


def _split_buffers(plan: _Plan, N: int, M: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(partial sums (splits, M, N) float32, arrival counters) for the plan's largest split; a 1-element placeholder
    kept per device when nothing splits (unsplit programs never touch it)."""
    if plan.splits == 1:
        placeholder = _PLACEHOLDERS.get(device)
        if placeholder is None:
            placeholder = _PLACEHOLDERS[device] = torch.empty(1, dtype=torch.float32, device=device)
        return placeholder, placeholder
    return (torch.empty(plan.splits, M, N, dtype=torch.float32, device=device),
            arrival_counters(device, plan.output_tiles))


def _mma_divides(k_slices: int, blocks_per_step: int, K: int) -> bool:
    """Whether K's blocks of 64 cut into k_slices slices of whole steps."""
    return (K // 64) % (k_slices * blocks_per_step) == 0


@functools.lru_cache(maxsize=256)
def _mma_constexprs(tile: MmaTile, dtype: torch.dtype, n_tiles: int, double_quant: bool) -> dict:
    """The mma kernel's tile constexprs and its assembly (made once per tile, dtype, tiles of tokens, absmax kind)."""
    warps = tile.row_groups * tile.k_slices
    return {"ROW_GROUPS": tile.row_groups, "K_SLICES": tile.k_slices, "BLOCKS_PER_STEP": tile.blocks_per_step,
            "TABLE_SETUP_ASM": "" if _INTERPRET else _pair_table_setup_asm(32 * warps, dtype),
            "STEP_ASM": "" if _INTERPRET else _mma_step_asm(tile.blocks_per_step, n_tiles, dtype, double_quant),
            "STEP_CONSTRAINTS": _mma_step_constraints(n_tiles)}


def _prune_mma(configs, named_args, **kwargs):
    """Steps and slices that divide the row's blocks."""
    return [c for c in configs if _mma_divides(c.kwargs["K_SLICES"], c.kwargs["BLOCKS_PER_STEP"], named_args["K"])]


@functools.lru_cache(maxsize=16)
def _mma_autotuned(dtype: torch.dtype, n_tiles: int, double_quant: bool):
    configs = [triton.Config(_mma_constexprs(t, dtype, n_tiles, double_quant), num_warps=t.row_groups * t.k_slices,
                             num_stages=1) for t in _MMA_TILES]
    return autotune(configs, ["N", "K", "M"], prune_configs_by={"early_config_prune": _prune_mma})(_nf4_mma_kernel)


def _uses_mma(x2: torch.Tensor, state, M: int) -> bool:
    """The mma path: 2+ tokens (or a pinned MmaTile) of bf16/fp16 x in rows of 16-byte aligned, unit-stride elements;
    blocks of 64; absmax 16-byte aligned (a step's absmax is one vector load)."""
    pinned = _PINNED.get("tile")
    return ((M > 1 and pinned is None or isinstance(pinned, MmaTile)) and x2.dtype in _MMA_TYPES
            and state.blocksize == 64 and x2.stride(1) == 1 and x2.stride(0) % 8 == 0 and x2.data_ptr() % 16 == 0
            and state.absmax.data_ptr() % 16 == 0)


def autotuner(M: int, N: int, K: int, dtype: torch.dtype, double_quant: bool):
    """The autotuner that launches a call of M tokens of `dtype` times an (N, K) weight (aligned x, blocks of 64;
    benchmarks read its choice)."""
    if M > 1 and dtype in _MMA_TYPES:
        return _mma_autotuned(dtype, 1 if M <= 8 else 2, double_quant)
    pairs = dtype in _PAIR_FORMATS
    return _AUTOTUNED[_family(M > 1, pairs), _level_format(M > 1, pairs, dtype, N * K)]


_LAUNCHES = Launches()  # both kernels' launches after a key's first (impls/_host.Launches)


def _mma_matmul(x2: torch.Tensor, state, scales: torch.Tensor, offset: torch.Tensor, out: torch.Tensor,
                table: torch.Tensor, dynamic: torch.Tensor) -> None:
    """out (M·N contiguous elements, rows N apart) = x2 · ŵᵀ by _nf4_mma_kernel: autotuned among _MMA_TILES, or the
    pinned, interpreter's or (small weights) first tile that divides K; on the GPU a launch key's compiled kernel is
    relaunched directly (_LAUNCHES) after its first launch."""
    (N, K), M = state.shape, x2.shape[0]
    codes = state.codes if state.codes.data_ptr() % 8 == 0 else state.codes.clone()  # 8-byte loads
    tensors = (x2, codes, state.absmax, scales, offset, table, dynamic, out)
    args = (*tensors, M, N, K, x2.stride(0), K // 2, N)  # out: (M, N) with rows N apart
    pinned = _PINNED.get("tile")
    key = _LAUNCHES.key("mma", (state.double_quant, pinned, x2.device.index), tensors, args)
    if _LAUNCHES.relaunched(key, x2.device.index, args):
        return
    n_tiles = 1 if M <= 8 else 2
    common = {"DOUBLE_QUANT": state.double_quant, "DQ_BLOCKSIZE": DQ_BLOCKSIZE, "N_TILES": n_tiles}
    tile = None
    if isinstance(pinned, MmaTile):
        if not _mma_divides(pinned.k_slices, pinned.blocks_per_step, K):
            raise ValueError(f"pinned {pinned} needs K / 64 to be a multiple of k_slices x blocks_per_step, "
                             f"got K = {K}")
        tile = pinned
    elif _INTERPRET or N * K < _AUTOTUNE_MIN_WEIGHT:
        first = [_INTERPRETER_MMA_TILE] if _INTERPRET else _MMA_TILES
        tile = next(t for t in [*first, MmaTile(1, 1, 1)] if _mma_divides(t.k_slices, t.blocks_per_step, K))
    if tile is None:
        tuner = _mma_autotuned(x2.dtype, n_tiles, state.double_quant)
        kernel = tuner[lambda meta: (cdiv(N, 16 * meta["ROW_GROUPS"]), cdiv(M, 16))](*args, **common)
        constexprs = common | tuner.best_config.kwargs
    else:
        constexprs = common | _mma_constexprs(tile, x2.dtype, n_tiles, state.double_quant)
        kernel = _nf4_mma_kernel[(cdiv(N, 16 * tile.row_groups), cdiv(M, 16))](
            *args, **constexprs, num_warps=tile.row_groups * tile.k_slices, num_stages=1)
    _LAUNCHES.remember(key, kernel, (cdiv(N, 16 * constexprs["ROW_GROUPS"]), cdiv(M, 16), 1), _nf4_mma_kernel,
                       args, constexprs)


def nf4_matmul(x: torch.Tensor, state) -> torch.Tensor:
    """x (..., K) · ŵᵀ for an NF4State of an (N, K) weight with K % blocksize == 0 -> (..., N) in x's dtype. The host
    path is what an eager one-token call at small weights waits on (the kernel takes ~13 µs at 4096²): no reshape of
    2-D x or of the output (allocated in its final shape, rows N apart), no views on a relaunch (the launcher reads
    only pointers), one placeholder per device."""
    N, K = state.shape
    if K % state.blocksize or state.blocksize < 8:
        raise ValueError(f"triton_nf4_matmul needs K % blocksize == 0 (a block within one row) and blocksize >= 8, got "
                         f"K = {K}, blocksize {state.blocksize}")
    if x.dim() == 0 or x.shape[-1] != K:
        raise ValueError(f"triton_nf4_matmul needs x of shape (..., K) with the weight's K = {K}, got {tuple(x.shape)}")
    x2 = x if x.dim() == 2 else x.reshape(-1, K)  # (M, K)
    M, device, double_quant = x2.shape[0], x.device, state.double_quant
    out = torch.empty(*x.shape[:-1], N, dtype=x.dtype, device=device)  # (..., N) contiguous: (M, N) with rows N apart
    table, dynamic = device_tables(device)
    scales = state.absmax_scales if double_quant else state.absmax  # placeholders without double quantization
    offset = state.absmax_offset if double_quant else state.absmax
    if _uses_mma(x2, state, M):
        _mma_matmul(x2, state, scales, offset, out, table, dynamic)
        return out
    pinned = _PINNED.get("tile")
    pairs = M == 1 and x.dtype in _PAIR_FORMATS and x2.stride(1) == 1 and x2.storage_offset() % 2 == 0
    codes = state.codes if state.codes.storage_offset() % 4 == 0 else state.codes.clone()  # words: 4-byte aligned
    chunks = x2.data_ptr() % 16 == 0 and codes.data_ptr() % 16 == 0  # for chunk tiles' 16-byte loads (_plan)
    plan = _plan(N, K, M, x.dtype, state.blocksize, double_quant, pairs, chunks, device,
                 pinned if isinstance(pinned, Tile) else None)
    partial, arrivals = _split_buffers(plan, N, M, device)
    # x2 and codes stand for their 32-bit views (x_pairs, words): the same pointers, all a relaunch passes
    tensors = (x2, x2, codes, codes, state.absmax, scales, offset, table, dynamic, out, partial, arrivals)
    ints = (M, N, K, *x2.stride(), K // 2, N, 1)  # M, N, K, x's strides, codes' row stride, the output's strides
    settings = (state.blocksize, double_quant, pairs, plan.tile, device.index)  # dtypes: in every key
    relaunch_args = (*tensors, *ints)
    key = _LAUNCHES.key("words", settings, tensors, relaunch_args)
    if _LAUNCHES.relaunched(key, device.index, relaunch_args):
        return out
    x_pairs = x2.view(torch.int32) if pairs else x2  # (M, K / 2): x[m, 2j] in the low half of x_pairs[m, j]
    words = codes.view(torch.int32)  # K % 8 == 0: rows of K / 8 words
    args = (x2, x_pairs, codes, words, *tensors[4:], *ints)
    tokens = plan.tokens
    sms = _num_sms(device)

    def grid(meta):
        along_rows = programs_along_rows(N, meta["BLOCK_N"], meta["SPLIT_K"], meta["TAIL_ROUND"], sms, meta["STREAM_K"])
        return along_rows, tokens, 1

    if plan.tile is None:
        tuner = _AUTOTUNED[plan.family, plan.levels]
        kernel = tuner[grid](*args, **plan.constexprs)
        constexprs = plan.constexprs | tuner.best_config.kwargs
    else:
        constexprs = plan.constexprs
        kernel = _nf4_matmul_kernel[grid(constexprs)](*args, **constexprs)
    _LAUNCHES.remember(key, kernel, grid(constexprs), _nf4_matmul_kernel, args, constexprs)
    return out
