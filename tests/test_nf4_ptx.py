"""The NF4 kernel's inline PTX, run in a Python model of its instructions (tests/_ptx_model.py): the byte table its
setup writes to shared memory, the sum each word's assembly returns (one token), the 8 weights each word decodes to
(2-16 tokens), the bank use of their table loads, and the absmax they load (plain, or double-quantized bit-exact to
bitsandbytes' decoding); known-wrong variants of the assembly show each check can fail; and the whole kernel compiled
for sm_90 by Triton and ptxas (no GPU needed). On CUDA the contract's own checks cover the same code."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from _ptx_model import Program, Thread, run, run_warp, wavefronts
from llmopt.impls.nf4_matmul import _triton_nf4_matmul_kernels as kernels
from llmopt.reference.nf4_format import DQ_BLOCKSIZE, dynamic_table, nf4_table

LEVELS = nf4_table("cpu").numpy().astype(np.float32)
LEVELS_ADDRESS = 0x7F0000001000  # any global address: the model maps it to LEVELS
WARP = 32


def _filled_program(setup_asm: str, threads: int) -> tuple[Program, int]:
    """(program after every thread ran the setup, the table address the setup returned)."""
    program = Program(global_buffers={LEVELS_ADDRESS: LEVELS})
    returned = {run(setup_asm, Thread(tid, program), {0: 0, 1: LEVELS_ADDRESS})[0] for tid in range(threads)}
    assert len(returned) == 1, f"threads disagree on the table address: {returned}"
    return program, returned.pop()


HALF_LEVELS = LEVELS.astype(np.float16)  # the "f16" byte table's levels, rounded to nearest even
LEVEL_FORMATS = list(kernels._TABLE_LAYOUT)


def _expected_slots(levels: str) -> np.ndarray:
    """Slot i of the byte table holds both levels of byte i // copies (high nibble first): (4096, 2) float32 for
    "f32"; (8192, 2) fp16 for "f16" (the high nibble's in the low half of a little-endian 32-bit pair)."""
    slot_bytes, copies = kernels._TABLE_LAYOUT[levels]
    entries = np.arange(kernels._TABLE_BYTES // slot_bytes) // copies
    values = LEVELS if levels == "f32" else HALF_LEVELS
    return np.stack([values[entries >> 4], values[entries & 15]], axis=1)


def table_problems(setup_asm: str, threads: int, levels: str) -> list[str]:
    try:
        program, table = _filled_program(setup_asm, threads)
    except ValueError as error:  # an access outside the table
        return [str(error)]
    start = table - program.shared_base
    problems = []
    if not all(program.written[start:start + kernels._TABLE_BYTES]):
        problems.append("some table bytes never written")
    expected = _expected_slots(levels)
    slots = np.frombuffer(bytes(program.shared[start:start + kernels._TABLE_BYTES]),
                          dtype=expected.dtype).reshape(expected.shape)
    wrong = np.flatnonzero((slots.view(np.uint8) != expected.view(np.uint8)).any(axis=1))
    if wrong.size:
        problems.append(f"{wrong.size} slots hold other levels, first slot {wrong[0]}: {slots[wrong[0]]}")
    return problems


def word_dot_problems(setup_asm: str, word_asm: str, seed: int, levels: str, threads: int = 128) -> list[str]:
    """Run the word assembly for every lane of one warp on random words and x: its sums against Σ level·x in float64
    (the table's levels: fp16-rounded for "f16"), and the wavefronts of each of its table loads across the warp
    (conflict-free: 2 for 8-byte loads, 1 for 4-byte)."""
    rng = np.random.default_rng(seed)
    program, table = _filled_program(setup_asm, threads)
    values = LEVELS if levels == "f32" else HALF_LEVELS.astype(np.float32)
    conflict_free = kernels._TABLE_LAYOUT[levels][0] // 4
    words = rng.integers(0, 1 << 32, size=WARP, dtype=np.uint64)
    x = rng.standard_normal((WARP, 8)).astype(np.float32)
    lanes = [Thread(lane, program) for lane in range(WARP)]
    problems = []
    for lane, thread in enumerate(lanes):
        operands = {0: 0, 1: int(words[lane]), **{2 + e: x[lane, e] for e in range(8)}, 10: table}
        got = float(run(word_asm, thread, operands)[0])
        codes = [(int(words[lane]) >> (4 * (2 * (e // 2) + 1 - e % 2))) & 15 for e in range(8)]  # element order
        terms = values[codes].astype(np.float64) * x[lane].astype(np.float64)
        if abs(got - terms.sum()) > 1e-6 * np.abs(terms).sum():
            problems.append(f"lane {lane}: word {int(words[lane]):#010x} sums to {got}, expected {terms.sum()}")
    for step in range(len(lanes[0].shared_loads)):
        passes = wavefronts([thread.shared_loads[step] for thread in lanes])
        if passes != conflict_free:
            problems.append(f"table load {step} takes {passes} wavefronts across the warp (conflict-free: "
                            f"{conflict_free})")
    return problems


def word_weights_problems(setup_asm: str, weights_asm: str, dtype: torch.dtype, seed: int,
                          threads: int = 128) -> list[str]:
    """Run the 2-16-token path's weights assembly for every lane of one warp on random words and absmax: each of its 8
    outputs bit-exact to torch's float32 level · absmax cast to dtype (element e: byte e // 2, high nibble when e is
    even), and the wavefronts of each of its table loads across the warp."""
    rng = np.random.default_rng(seed)
    program, table = _filled_program(setup_asm, threads)
    words = rng.integers(0, 1 << 32, size=WARP, dtype=np.uint64)
    absmax = (rng.standard_normal(WARP) * 0.05).astype(np.float32)
    lanes = [Thread(lane, program) for lane in range(WARP)]
    problems = []
    for lane, thread in enumerate(lanes):
        got = run(weights_asm, thread, {**{e: 0 for e in range(8)}, 8: int(words[lane]), 9: absmax[lane], 10: table})
        codes = [(int(words[lane]) >> (4 * (2 * (e // 2) + 1 - e % 2))) & 15 for e in range(8)]
        products = torch.from_numpy(LEVELS[codes] * absmax[lane])  # float32 products
        expected = products.to(dtype).view(torch.int16).numpy().astype(np.uint16)
        if [got[e] for e in range(8)] != [int(v) for v in expected]:
            problems.append(f"lane {lane}: word {int(words[lane]):#010x} gives {[hex(got[e]) for e in range(8)]}, "
                            f"expected {[hex(v) for v in expected]}")
    for step in range(len(lanes[0].shared_loads)):
        passes = wavefronts([thread.shared_loads[step] for thread in lanes])
        if passes != 2:
            problems.append(f"table load {step} takes {passes} wavefronts across the warp (conflict-free: 2)")
    return problems


@pytest.mark.parametrize("levels", LEVEL_FORMATS)
@pytest.mark.parametrize("threads", [32, 64, 128, 256])
def test_the_setup_fills_every_slot_of_the_byte_table(threads, levels):
    assert table_problems(kernels._table_setup_asm(threads, levels), threads, levels) == []


@pytest.mark.parametrize("levels", LEVEL_FORMATS)
@pytest.mark.parametrize("seed", range(3))
def test_the_word_assembly_sums_level_times_x_without_bank_conflicts(seed, levels):
    assert word_dot_problems(kernels._table_setup_asm(128, levels), kernels._WORD_DOT_ASM[levels], seed, levels) == []


def test_fp16_levels_are_within_2_to_the_minus_11_of_the_codebook():
    """The "f16" table's claim: rounding each level to fp16 moves it by at most 2^-11 of itself (bf16 x's own rounding
    of ŵ in a dequantize-then-matmul: up to 2^-8), and keeps its sign and the exact zero."""
    nonzero = LEVELS != 0
    relative = np.abs(HALF_LEVELS.astype(np.float64) - LEVELS) / np.where(nonzero, np.abs(LEVELS), 1)
    assert relative.max() <= 2.0 ** -11 and (HALF_LEVELS[~nonzero] == 0).all()
    assert (np.sign(HALF_LEVELS) == np.sign(LEVELS)).all()


def test_fp16_levels_serve_one_token_of_bf16_at_large_weights_only():
    """fp16 levels where their rounding stays far under x's own (bf16, one token) and the weight is large enough for
    their fewer wavefronts to pay and for the contract to hold (on its small draws they fail it now and then:
    bench/nf4_tolerance.py); float32 for fp16 x (its rounding of ŵ is as fine as fp16 levels'), for the dot path (it
    rounds level · absmax to x's dtype) and for small weights."""
    large = kernels._F16_LEVELS_MIN_WEIGHT
    assert kernels._level_format(False, True, torch.bfloat16, large) == "f16"
    assert {kernels._level_format(False, True, torch.float16, large), kernels._level_format(True, True, torch.bfloat16,
            large), kernels._level_format(False, False, torch.bfloat16, large),
            kernels._level_format(False, True, torch.bfloat16, large - 1)} == {"f32"}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("seed", range(2))
def test_the_weights_assembly_rounds_level_times_absmax_to_x_dtype(dtype, seed):
    assert word_weights_problems(kernels._table_setup_asm(128, "f32"), kernels._WORD_WEIGHTS_ASM[dtype], dtype,
                                 seed) == []


def test_the_model_refuses_an_instruction_it_does_not_know():
    with pytest.raises(NotImplementedError, match="cvt.rn.f32.u32"):
        run("{ cvt.rn.f32.u32 $0, $1; }", Thread(0, Program()), {0: 0, 1: 3})
    mma = ("{ mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {$0, $0, $0, $0}, {$1, $1, $1, $1}, {$1, $1}, "
           "{$0, $0, $0, $0}; }")
    program = Program()
    with pytest.raises(NotImplementedError, match="over 31 threads"):  # an mma needs the whole warp
        run_warp(mma, [Thread(lane, program) for lane in range(31)], [{0: 0.0, 1: 0}] * 31)
    with pytest.raises(NotImplementedError, match="m16n8k8"):  # a shape the model does not lay out
        run_warp(mma.replace("m16n8k16", "m16n8k8"), [Thread(lane, program) for lane in range(32)],
                 [{0: 0.0, 1: 0}] * 32)


def test_the_setup_refuses_thread_counts_it_cannot_fill_with():
    with pytest.raises(ValueError, match="threads"):
        kernels._table_setup_asm(96, "f32")
    with pytest.raises(ValueError, match="32 x"):  # fp16 entries: a copy for each lane of a warp
        kernels._table_setup_asm(16, "f16")


# Known-wrong assembly: each is rejected by the check its bug breaks.
def _swap_x_of_each_byte(asm: str) -> str:  # even element's level against the odd element's x and back
    return asm.replace("s, h, $", "s, h, %").replace("s, l, $", "s, h, $").replace("s, h, %", "s, l, $")


_F32_WORD, _F16_WORD = kernels._WORD_DOT_ASM["f32"], kernels._WORD_DOT_ASM["f16"]
WRONG_WORD_ASM = {  # name: (levels, wrong assembly)
    "x of the two nibbles swapped": ("f32", _swap_x_of_each_byte(_F32_WORD)),
    "byte read a nibble off": ("f32", _F32_WORD.replace("bfe.u32 a, $1, 8, 8", "bfe.u32 a, $1, 12, 8")),
    "one table copy for every lane": ("f32", _F32_WORD.replace("and.b32 b, b, 15", "and.b32 b, b, 0")),
    "copies per full warp (8-byte loads conflict)": ("f32", _F32_WORD.replace("and.b32 b, b, 15", "and.b32 b, b, 31")),
    "fp16: x of the two nibbles swapped": ("f16", _swap_x_of_each_byte(_F16_WORD)),
    "fp16: pair's halves taken high nibble low": ("f16", _F16_WORD.replace("mov.b32 {e, o}, r", "mov.b32 {o, e}, r")),
    "fp16: copies per half-warp (lanes 16 apart conflict)": ("f16", _F16_WORD.replace("and.b32 b, b, 31",
                                                                                      "and.b32 b, b, 15")),
    "fp16: entries 64 bytes apart": ("f16", _F16_WORD.replace("mad.lo.u32 a, a, 128, b", "mad.lo.u32 a, a, 64, b")),
    "float32 lookups of the fp16 table": ("f16", _F32_WORD),
}
_BF16_WEIGHTS = kernels._WORD_WEIGHTS_ASM[torch.bfloat16]
WRONG_WEIGHTS_ASM = {
    "pair packed high nibble high": _BF16_WEIGHTS.replace("r, l, h;", "r, h, l;"),
    "halves unpacked the wrong way": _BF16_WEIGHTS.replace("mov.b32 {$0, $1}", "mov.b32 {$1, $0}"),
    "absmax left out of the odd element": _BF16_WEIGHTS.replace("mul.rn.f32 l, l, $9;", ""),
    "rounded to fp16 for bf16 x": kernels._WORD_WEIGHTS_ASM[torch.float16],
    "byte read a nibble off": _BF16_WEIGHTS.replace("bfe.u32 a, $8, 16, 8", "bfe.u32 a, $8, 20, 8"),
    "one table copy for every lane": _BF16_WEIGHTS.replace("and.b32 b, b, 15", "and.b32 b, b, 0"),
}
WRONG_SETUP_ASM = {  # name: (levels, threads, wrong assembly)
    "levels of a byte stored low nibble first": ("f32", 128, re.sub(
        r"\{(h\d+), (l\d+)\}", r"{\2, \1}", kernels._table_setup_asm(128, "f32"))),
    "fill stride of 64 threads by 128": ("f32", 64, kernels._table_setup_asm(64, "f32").replace(
        "mad.lo.u32 a, t, 8, $0", "mad.lo.u32 a, t, 16, $0")),
    "fp16 pair packed high nibble high": ("f16", 128, re.sub(
        r"f16x2\.f32 r, (l\d+), (h\d+)", r"f16x2.f32 r, \2, \1", kernels._table_setup_asm(128, "f16"))),
    "levels rounded to bf16": ("f16", 128, kernels._table_setup_asm(128, "f16").replace("cvt.rn.f16x2",
                                                                                         "cvt.rn.bf16x2")),
    "low nibbles of the wrong lanes' entries": ("f16", 64, kernels._table_setup_asm(64, "f16").replace(
        "shr.u32 t, t, 5", "shr.u32 t, t, 4")),
}


@pytest.mark.parametrize("name", list(WRONG_WORD_ASM))
def test_known_wrong_word_assembly_is_rejected(name):
    levels, wrong = WRONG_WORD_ASM[name]
    assert wrong != kernels._WORD_DOT_ASM[levels], "the mutation did not apply"
    assert word_dot_problems(kernels._table_setup_asm(128, levels), wrong, 0, levels) != []


@pytest.mark.parametrize("name", list(WRONG_WEIGHTS_ASM))
def test_known_wrong_weights_assembly_is_rejected(name):
    assert WRONG_WEIGHTS_ASM[name] != _BF16_WEIGHTS, "the mutation did not apply"
    assert word_weights_problems(kernels._table_setup_asm(128, "f32"), WRONG_WEIGHTS_ASM[name], torch.bfloat16,
                                 0) != []


@pytest.mark.parametrize("name", list(WRONG_SETUP_ASM))
def test_known_wrong_table_setup_is_rejected(name):
    levels, threads, wrong = WRONG_SETUP_ASM[name]
    assert wrong != kernels._table_setup_asm(threads, levels), "the mutation did not apply"
    assert table_problems(wrong, threads, levels) != []


def test_the_kernel_compiles_for_sm90_without_spilling(tmp_path):
    """Each path's first tile (with and without double quantization) through Triton and ptxas for sm_90: the inline
    assembly assembles, the byte and pair tables fit the static shared-memory limit ptxas enforces, nothing spills, the
    one-token and mma loops synchronize nothing (no layout conversion through shared memory), and the dot loop only
    around the dot's shared operand (twice a step: the weights are stored once, whole, not in chunks)."""
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "llmopt.bench.nf4_sass", str(tmp_path), "--first"], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads((tmp_path / "nf4_sass.json").read_text())["records"]
    paths = ("words", "dot", "mma")
    assert {(r["path"], r["double_quant"]) for r in records} == {(p, dq) for p in paths for dq in (0, 1)}
    assert [r["stack_bytes"] for r in records] == [0] * len(records)
    mmas = [r for r in records if r["path"] == "mma"]  # the sums stay in each lane's mma registers
    assert [r["loop_ops"].get("BAR", 0) for r in mmas] == [0] * len(mmas), "a barrier in the mma loop"
    assert all(r["loop_ops"]["HMMA"] > 0 for r in mmas)
    words = [r for r in records if r["path"] == "words"]  # the absmax by assembly keeps layout conversions out
    assert [r["loop_ops"].get("BAR", 0) for r in words] == [0] * len(words), "a barrier in the one-token loop"
    dots = [r for r in records if r["path"] == "dot"]
    assert [r["loop_ops"].get("BAR", 0) for r in dots] == [2] * len(dots), "the dot operand staged in chunks"


def test_the_compiled_checks_see_barriers_and_a_spill():
    """The static checks above can fail: the first tile of each path with its absmax loaded by Triton (the layout
    conversion it costs puts barriers in the one-token loop, and two more in the dot loop), and a dot tile too large for
    its registers (64 x 512, 4 warps)."""
    from llmopt.impls.nf4_matmul._triton_nf4_matmul_kernels import _DOT_TILES, _GEMV_TILES

    script = ("import json; from llmopt.bench.nf4_sass import tile_record; "
              "from llmopt.impls.nf4_matmul._triton_nf4_matmul_kernels import Tile; "
              f"words = tile_record(False, Tile(*{tuple(_GEMV_TILES[0])}), False, {{'ABSMAX_ASM': ''}}); "
              f"dot = tile_record(True, Tile(*{tuple(_DOT_TILES[0])}), False, {{'ABSMAX_ASM': ''}}); "
              "large = tile_record(True, Tile(64, 512, 4, 1), False); "
              "print(json.dumps([words['loop_ops'].get('BAR', 0), dot['loop_ops'].get('BAR', 0), "
              "large['stack_bytes']]))")
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    word_barriers, dot_barriers, spilled = json.loads(done.stdout.strip().splitlines()[-1])
    assert word_barriers > 0 and dot_barriers > 2 and spilled > 0


def test_prefetching_tiles_hold_the_next_steps_reads_beside_this_steps():
    """A prefetching tile issues the next step's reads before this step's sums, so both steps' codes are live at once:
    compiled for sm_90 it holds at least the next step's words per thread (BLOCK_N x BLOCK_K / 8 / threads) more
    registers than the same tile without prefetching. Written as one straight block, ptxas moved the reads after the
    sums, where the next step waited on them at once, and the two tiles compiled to the same registers (a chunk tile 96
    and 95, a word tile 96 and 96, before commit 7c2afb3)."""
    tiles = [(16, 1024, 4, True), (64, 256, 4, False)]  # (BLOCK_N, BLOCK_K, warps, chunks)
    script = ("import json; from llmopt.bench.nf4_sass import tile_record; "
              "from llmopt.impls.nf4_matmul._triton_nf4_matmul_kernels import Tile; "
              f"print(json.dumps([[tile_record(False, Tile(n, k, w, 1, prefetch=p, chunks=c), False)['registers'] "
              f"for p in (True, False)] for n, k, w, c in {tiles}]))")
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    registers = json.loads(done.stdout.strip().splitlines()[-1])
    for (n, k, warps, chunks), (prefetching, plain) in zip(tiles, registers, strict=True):
        next_step_words = n * k // 8 // (32 * warps)
        assert prefetching >= plain + next_step_words, (
            f"{'chunk' if chunks else 'word'} tile {n}x{k}: {prefetching} registers prefetching, {plain} without: the "
            f"next step's {next_step_words} words a thread are not held beside this step's")


ABSMAX_ADDRESS, SCALES_ADDRESS, DYNAMIC_ADDRESS = 0x7F0000010000, 0x7F0000020000, 0x7F0000030000
DYNAMIC = dynamic_table("cpu").numpy().astype(np.float32)


def absmax_problems(asm: str, double_quant: bool, seed: int = 0, blocks: int = 3 * DQ_BLOCKSIZE) -> list[str]:
    """Run the absmax assembly for every block, inside and outside the mask: inside it must equal the stored absmax,
    or dynamic[code] x scale then + offset in float32 (two roundings, as bitsandbytes decodes), bit for bit; outside,
    0, with no load outside the buffers and no register read before it is set."""
    rng = np.random.default_rng(seed)
    if double_quant:
        codes = rng.integers(0, 256, size=blocks, dtype=np.uint8)
        scales = rng.uniform(0.01, 2.0, size=-(-blocks // DQ_BLOCKSIZE)).astype(np.float32)
        offset = np.float32(rng.uniform(0.0, 1.0))
        expected = DYNAMIC[codes] * scales[np.arange(blocks) // DQ_BLOCKSIZE] + offset  # float32 ops, rounded each
        buffers = {ABSMAX_ADDRESS: codes, SCALES_ADDRESS: scales, DYNAMIC_ADDRESS: DYNAMIC}
    else:
        expected = rng.uniform(0.0, 3.0, size=blocks).astype(np.float32)
        buffers = {ABSMAX_ADDRESS: expected}
    program = Program(global_buffers=buffers)
    problems = []
    for block in range(blocks):
        for inside in (1, 0):
            if double_quant:
                operands = {0: 0, 1: ABSMAX_ADDRESS + block, 2: SCALES_ADDRESS + 4 * (block // DQ_BLOCKSIZE),
                            3: inside, 4: DYNAMIC_ADDRESS, 5: offset}
            else:
                operands = {0: 0, 1: ABSMAX_ADDRESS + 4 * block, 2: inside}
            try:
                got = np.float32(run(asm, Thread(0, program), operands)[0])
            except (KeyError, ValueError) as error:  # an unset register read, a load outside every buffer
                problems.append(f"block {block} {'inside' if inside else 'masked'}: {error}")
                continue
            want = expected[block] if inside else np.float32(0)
            if got.tobytes() != want.tobytes():
                problems.append(f"block {block} {'inside' if inside else 'masked'}: {got!r}, expected {want!r}")
    return problems


@pytest.mark.parametrize("double_quant", [False, True])
def test_the_absmax_assembly_loads_the_block_scale_bit_exactly(double_quant):
    assert absmax_problems(kernels._ABSMAX_ASM[double_quant], double_quant) == []


WRONG_ABSMAX_ASM = {
    (False, "mask ignored"): kernels._ABSMAX_ASM[False].replace("@p ", ""),
    (True, "mask ignored"): kernels._ABSMAX_ASM[True].replace("@p ", ""),
    (True, "one fused multiply-add (bitsandbytes rounds the product, then the sum)"): kernels._ABSMAX_ASM[True].replace(
        "@p mul.rn.f32 d, d, s; @p add.rn.f32 $0, d, $5;", "@p fma.rn.f32 $0, d, s, $5;"),
    (True, "offset left out"): kernels._ABSMAX_ASM[True].replace("@p add.rn.f32 $0, d, $5;", "@p mov.f32 $0, d;"),
    (True, "masked code left unset (the unpredicated map load reads an undefined entry)"):
        kernels._ABSMAX_ASM[True].replace(" mov.b32 c, 0;", ""),
    (True, "map load at the code's byte offset, not its float's"): kernels._ABSMAX_ASM[True].replace(
        "mul.wide.u32 q, c, 4;", "mul.wide.u32 q, c, 1;"),
}


@pytest.mark.parametrize("key", list(WRONG_ABSMAX_ASM), ids=[f"dq={dq}-{name}" for dq, name in WRONG_ABSMAX_ASM])
def test_known_wrong_absmax_assembly_is_rejected(key):
    assert WRONG_ABSMAX_ASM[key] != kernels._ABSMAX_ASM[key[0]], "the mutation did not apply"
    assert absmax_problems(WRONG_ABSMAX_ASM[key], double_quant=key[0]) != []


# ----------------------------------------------------------------------------------------------- the mma path

CODES_ADDRESS, X_ADDRESS = 0x7F0000040000, 0x7F0000080000
_HALF = {torch.bfloat16: "bf16x2", torch.float16: "f16x2"}


def _level_terms(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) terms of the 16 levels in x's 16-bit dtype: high = level rounded, low = (level - high) rounded."""
    levels = torch.from_numpy(LEVELS)
    high = levels.to(dtype)
    return high, (levels - high.float()).to(dtype)


def _half_levels(dtype: torch.dtype) -> np.ndarray:
    """The 16 levels as the sums of their two terms in x's 16-bit dtype, as float64."""
    high, low = _level_terms(dtype)
    return (high.double() + low.double()).numpy()


def pair_table_problems(setup_asm: str, dtype: torch.dtype, threads: int = 128) -> list[str]:
    """Every copy of every entry of the pair table holds both levels of its byte as their high-term pair, then their
    low-term pair, in x's dtype, the high nibble's in each pair's low half."""
    try:
        program, table = _filled_program(setup_asm, threads)
    except ValueError as error:
        return [str(error)]
    start, size = table - program.shared_base, 256 * kernels._PAIR_ENTRY_BYTES
    slots = np.frombuffer(bytes(program.shared[start:start + size]), dtype="<u4").reshape(256, -1, 2)
    written = np.frombuffer(bytes(program.written[start:start + size]), dtype="<u4").reshape(256, -1, 2)
    entries = np.arange(256)
    pairs = []
    for term in _level_terms(dtype):
        halves = term.view(torch.int16).numpy().astype(np.uint32) & 0xFFFF
        pairs.append(halves[entries & 15] << 16 | halves[entries >> 4])
    expected = np.stack(pairs, axis=1)[:, None, :]  # [entry, copy, (high, low) pair]
    problems = []
    if not written.all():
        problems.append("some table slots never written")
    wrong = np.argwhere(slots != expected)
    if wrong.size:
        problems.append(f"{len(wrong)} slots hold other pairs, first entry {wrong[0][0]} copy {wrong[0][1]}")
    return problems


def mma_step_problems(setup_asm: str, step_asm: str, dtype: torch.dtype, blocks: int, n_tiles: int, seed: int,
                      double_quant: bool = False, threads: int = 128) -> list[str]:
    """Run one step of the mma path for the 32 lanes of one warp (16 weight rows, `blocks` blocks of 64, 8·n_tiles
    tokens) on random codes, absmax (or double-quantized absmax: codes, one scale per row, an offset), x and starting
    sums: each lane's sums against start + Σ_blocks absmax · Σ level(x's dtype) · x in float64 (to float32
    rounding), and the wavefronts of each table load (1: conflict-free)."""
    rng = np.random.default_rng(seed)
    program, table = _filled_program(setup_asm, threads)
    row_bytes, row_elements = 32 * blocks, 64 * blocks
    codes = rng.integers(0, 256, size=(16, row_bytes), dtype=np.uint8)
    x = torch.randn(16, row_elements, generator=torch.Generator().manual_seed(seed)).to(dtype)
    x_bytes = x.view(torch.uint8).numpy()
    program.global_buffers |= {CODES_ADDRESS: codes.reshape(-1), X_ADDRESS: x_bytes.reshape(-1)}
    if double_quant:
        absmax_codes = rng.integers(0, 256, size=(16, blocks), dtype=np.uint8)
        scales = rng.uniform(0.01, 2.0, size=16).astype(np.float32)  # one per row (the kernel's steps share one)
        offset = np.float32(rng.uniform(0.0, 1.0))
        absmax = DYNAMIC[absmax_codes] * scales[:, None] + offset  # float32 ops, each rounded: bitsandbytes' decoding
        program.global_buffers |= {ABSMAX_ADDRESS: absmax_codes.reshape(-1), SCALES_ADDRESS: scales,
                                   DYNAMIC_ADDRESS: DYNAMIC}
    else:
        absmax = rng.uniform(0.5, 2.0, size=(16, blocks)).astype(np.float32)
        offset = np.float32(0)
        program.global_buffers |= {ABSMAX_ADDRESS: absmax.reshape(-1)}
    absmax_bytes = 1 if double_quant else 4
    acc = 4 * n_tiles
    start_sums = rng.normal(size=(32, acc)).astype(np.float32)
    threads_of_warp = [Thread(lane, program) for lane in range(WARP)]
    operands = []
    for lane in range(WARP):
        g, t = lane // 4, lane % 4
        bound = {n: np.float32(0) for n in range(acc)} | {acc + n: start_sums[lane, n] for n in range(acc)}
        bound |= {2 * acc: CODES_ADDRESS + g * row_bytes + 8 * t,
                  2 * acc + 1: CODES_ADDRESS + (g + 8) * row_bytes + 8 * t,
                  2 * acc + 2: ABSMAX_ADDRESS + absmax_bytes * g * blocks,
                  2 * acc + 3: ABSMAX_ADDRESS + absmax_bytes * (g + 8) * blocks}
        bound |= {2 * acc + 4 + n: X_ADDRESS + 2 * ((g + 8 * n) * row_elements + 16 * t) for n in range(n_tiles)}
        dq = 2 * acc + 4 + n_tiles
        bound |= {dq: SCALES_ADDRESS + 4 * g, dq + 1: SCALES_ADDRESS + 4 * (g + 8), dq + 2: DYNAMIC_ADDRESS,
                  dq + 3: offset, dq + 4: table}
        operands.append(bound)
    try:
        sums = run_warp(step_asm, threads_of_warp, operands)
    except (ValueError, KeyError) as error:  # an access outside a buffer or misaligned, a register never written
        return [f"{type(error).__name__}: {error}"]
    levels = _half_levels(dtype)
    weights = np.stack([levels[codes >> 4], levels[codes & 15]], axis=-1).reshape(16, blocks, 64)
    x64 = x.double().numpy().reshape(16, blocks, 64)
    terms = np.einsum("rbk,tbk->rtb", weights, x64) * absmax[:, None, :].astype(np.float64)  # [row, token, block]
    problems = []
    for lane in range(WARP):
        g, t = lane // 4, lane % 4
        for n in range(n_tiles):
            for reg, (row, token) in enumerate(((g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1))):
                want = start_sums[lane, 4 * n + reg] + terms[row, token + 8 * n].sum()
                bound = 2.0 ** -21 * (abs(start_sums[lane, 4 * n + reg]) + np.abs(terms[row, token + 8 * n]).sum()
                                      + np.abs(np.einsum("bk,bk->b", np.abs(weights[row]), np.abs(x64[token + 8 * n]))
                                               * absmax[row]).sum())
                got = float(sums[lane][4 * n + reg])
                if not abs(got - want) <= bound:
                    problems.append(f"lane {lane} row {row} token {token + 8 * n}: {got}, expected {want}")
    loads = [thread.shared_loads for thread in threads_of_warp]
    worst = max(wavefronts([lane_loads[i] for lane_loads in loads]) for i in range(len(loads[0])))
    if worst > 2:  # 8-byte loads: a half-warp a wavefront
        problems.append(f"table loads take up to {worst} wavefronts")
    return problems[:8]


@pytest.mark.parametrize(("dtype", "threads"), [(torch.bfloat16, 128), (torch.float16, 128), (torch.bfloat16, 32),
                                                (torch.bfloat16, 256), (torch.float16, 64)])
def test_the_pair_table_holds_both_levels_of_each_byte_as_two_terms_of_x_dtype(dtype, threads):
    assert pair_table_problems(kernels._pair_table_setup_asm(threads, dtype), dtype, threads) == []


@pytest.mark.parametrize("dtype,blocks,n_tiles,double_quant", [(torch.bfloat16, 2, 1, False),
                                                               (torch.float16, 1, 2, False),
                                                               (torch.bfloat16, 1, 2, True),
                                                               (torch.float16, 2, 1, True)])
def test_the_mma_step_sums_absmax_times_level_times_x_per_row_and_token(dtype, blocks, n_tiles, double_quant):
    setup = kernels._pair_table_setup_asm(128, dtype)
    step = kernels._mma_step_asm(blocks, n_tiles, dtype, double_quant)
    assert mma_step_problems(setup, step, dtype, blocks, n_tiles, 0, double_quant) == []


_MMA_STEP = kernels._mma_step_asm(2, 1, torch.bfloat16)
_PAIR_SETUP = kernels._pair_table_setup_asm(128, torch.bfloat16)
WRONG_MMA_STEP = {
    "x pairs of a k step swapped": _MMA_STEP.replace("{x0, x1}", "{x1, x0}"),
    "rows g and g + 8 swapped": _MMA_STEP.replace("{a0, a1, a2, a3}", "{a1, a0, a3, a2}"),
    "k halves swapped": _MMA_STEP.replace("{a0, a1, a2, a3}", "{a2, a3, a0, a1}"),
    "row g's absmax for both rows": _MMA_STEP.replace(", s1, ", ", s0, "),
    "block sums not restarted": _MMA_STEP.replace("{z, z, z, z}", "{d0, d1, d2, d3}"),
    "a byte read a nibble off": _MMA_STEP.replace("bfe.u32 q, c0, 0, 8;", "bfe.u32 q, c0, 4, 8;"),
    "second block's codes of row g from the first": _MMA_STEP.replace("[$8+32]", "[$8+0]"),
    "row g's two blocks' absmax swapped": _MMA_STEP.replace("{s0, s2}", "{s2, s0}"),
    "second block's x from the first": _MMA_STEP.replace("[$12+144]", "[$12+16]"),
    "one table copy for all lanes": _MMA_STEP.replace("mad.lo.u32 b, b, 8,", "mad.lo.u32 b, b, 0,"),
    "copies per full warp (8-byte loads conflict)": _MMA_STEP.replace("and.b32 b, b, 15;", "and.b32 b, b, 31;"),
    "the levels' low terms left out": re.sub(r"\nmma[^\n]*\{e0, e1, e2, e3\}[^\n]*;", "", _MMA_STEP),
    "low terms against the next k step's x": _MMA_STEP.replace("{e0, e1, e2, e3}, {x0, x1}",
                                                               "{e0, e1, e2, e3}, {x2, x3}"),
}


_MMA_STEP_DQ = kernels._mma_step_asm(2, 1, torch.bfloat16, True)
WRONG_MMA_STEP_DQ = {
    "row g's scale for both rows": _MMA_STEP_DQ.replace("mul.rn.f32 v, v, sg8;", "mul.rn.f32 v, v, sg;"),
    "a step's absmax codes a byte off": _MMA_STEP_DQ.replace("bfe.u32 q, e, 8, 8;", "bfe.u32 q, e, 0, 8;"),
    "offset left out": _MMA_STEP_DQ.replace("add.rn.f32 s1, v, $16;", "mov.f32 s1, v;"),
}


@pytest.mark.parametrize("name", list(WRONG_MMA_STEP))
def test_known_wrong_mma_step_is_rejected(name):
    assert WRONG_MMA_STEP[name] != _MMA_STEP, "the mutation did not apply"
    assert mma_step_problems(_PAIR_SETUP, WRONG_MMA_STEP[name], torch.bfloat16, 2, 1, 0) != []


@pytest.mark.parametrize("name", list(WRONG_MMA_STEP_DQ))
def test_known_wrong_double_quantized_mma_step_is_rejected(name):
    assert WRONG_MMA_STEP_DQ[name] != _MMA_STEP_DQ, "the mutation did not apply"
    assert mma_step_problems(_PAIR_SETUP, WRONG_MMA_STEP_DQ[name], torch.bfloat16, 2, 1, 0, True) != []


WRONG_PAIR_SETUP = {
    "halves swapped": re.sub(r"cvt\.rn\.bf16x2\.f32 v, (l\d+), (h\d+);", r"cvt.rn.bf16x2.f32 v, \2, \1;",
                             _PAIR_SETUP),
    "low-nibble levels of the wrong half-warp": _PAIR_SETUP.replace("mul.wide.u32 p, u, 4;", "mul.wide.u32 p, t, 4;"),
    "low terms of the level itself, not of its rounding error": re.sub(r"sub\.rn\.f32 (f[hl]), (\w+), f[hl];",
                                                                        r"mov.f32 \1, \2;", _PAIR_SETUP),
    "low term pair's halves swapped": _PAIR_SETUP.replace("cvt.rn.bf16x2.f32 r, fl, fh;",
                                                          "cvt.rn.bf16x2.f32 r, fh, fl;"),
    "copies 4 bytes apart": _PAIR_SETUP.replace("mad.lo.u32 a, t, 8, $0;", "mad.lo.u32 a, t, 4, $0;"),
}


@pytest.mark.parametrize("name", list(WRONG_PAIR_SETUP))
def test_known_wrong_pair_table_is_rejected(name):
    assert WRONG_PAIR_SETUP[name] != _PAIR_SETUP, "the mutation did not apply"
    assert pair_table_problems(WRONG_PAIR_SETUP[name], torch.bfloat16) != []
