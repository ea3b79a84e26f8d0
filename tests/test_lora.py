"""LoRA and QLoRA beyond the generic contract runs: peft's own merge and
unmerge against the reference within rounding; the fused Triton layer never forms the (out, in) update; validation
names the layout."""
from __future__ import annotations

import pytest
import torch
from llmopt.impls import discover
from llmopt.reference.contract import Call
from llmopt.reference.lora import LoraCase, check_lora_call, lora_linear, lora_make_call, merge_lora, unmerge_lora


def _merge_rounding(dtype: torch.dtype, W: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                    scaling: float) -> torch.Tensor:
    """Elementwise bound on the rounding of W + scaling·B·A computed in `dtype` (or in float32 and rounded to dtype):
    the r-term product errs by at most r·eps·scaling·(|B|·|A|) (the classic γ_r bound), the sum and the final
    rounding by eps·(|W| + |result|)."""
    eps, r = torch.finfo(dtype).eps, A.shape[0]
    terms = abs(scaling) * (B.double().abs() @ A.double().abs())
    exact = W.double() + scaling * (B.double() @ A.double())
    return eps * (r * terms + W.double().abs() + exact.abs() + terms)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_peft_merge_and_unmerge_agree_with_the_reference_within_rounding(dtype):
    pytest.importorskip("peft")
    from peft import LoraConfig
    from peft.tuners.lora import Linear

    x, W, A, B = (t.to(dtype) for t in lora_make_call(LoraCase((4,), 48, 40, 8, 2.0, "float32", seed=3), "cpu").args)
    base = torch.nn.Linear(48, 40, bias=False, dtype=dtype)
    layer = Linear(base, "default", config=LoraConfig(r=8, lora_alpha=16), r=8, lora_alpha=16)
    with torch.no_grad():
        base.weight.copy_(W)
        layer.lora_A["default"].weight.copy_(A)
        layer.lora_B["default"].weight.copy_(B)
        unmerged = layer(x)
        layer.merge()
        merged_weight = base.weight.detach().clone()
        merged = layer(x)
        layer.unmerge()
    bound = _merge_rounding(dtype, W, A, B, 2.0)
    exact = merge_lora(W.double(), A.double(), B.double(), scaling=2.0)
    assert ((merged_weight.double() - exact).abs() <= bound).all()
    assert ((base.weight.detach().double() - W.double()).abs() <= 2 * bound).all()  # merge then unmerge: W back
    stick = lora_linear(x.double(), W.double(), A.double(), B.double(), scaling=2.0)
    noise = 2 * (lora_linear(x, W, A, B, scaling=2.0).double() - stick).abs().max()
    floor = torch.finfo(dtype).eps * stick.abs().max()
    assert (unmerged.double() - stick).abs().max() <= noise + floor
    merge_effect = (x.double().abs() @ (merged_weight.double() - exact).abs().mT).max()  # x times the merge rounding
    assert (merged.double() - stick).abs().max() <= noise + floor + merge_effect


def test_reference_unmerge_restores_the_weight_within_rounding():
    _, W, A, B = lora_make_call(LoraCase((1,), 64, 32, 16, 16.0, "bfloat16", seed=5), "cpu").args
    back = unmerge_lora(merge_lora(W, A, B, scaling=16.0), A, B, scaling=16.0)
    assert ((back.double() - W.double()).abs() <= 2 * _merge_rounding(torch.bfloat16, W, A, B, 16.0)).all()
    assert not torch.equal(back, W)  # bf16 rounding is real: the round trip is exact only within it


def _record_launches(monkeypatch, kernels) -> list[tuple]:
    """Each launch of the fused LoRA's GEMM kernel from now on, as (rows M, columns N, rank of the shrink it joins or
    0), the launch itself still made."""
    launches = []
    original = kernels._launch

    def recording(a, b, c, alpha, low_rank, shrink):
        launches.append((a.shape[0], b.shape[1], shrink[0].shape[1] if shrink is not None else 0))
        return original(a, b, c, alpha, low_rank, shrink)

    monkeypatch.setattr(kernels, "_launch", recording)
    return launches


@pytest.mark.parametrize("shrink_max_m", [32, 0], ids=["shrink joined", "shrink launched alone"])
def test_triton_lora_never_forms_the_full_update(monkeypatch, shrink_max_m):
    """The fused LoRA's launches, forward and backward: every product it computes is of rank r or of the base's shape,
    never B·A (out, in); up to _SHRINK_MAX_M tokens each shrink (t, u) joins the launch of the product beside it."""
    impl = discover("lora")["triton_lora"]
    if impl.unavailable_reason("cpu") is not None:
        pytest.skip(impl.unavailable_reason("cpu"))
    from llmopt.impls.lora import _triton_lora_kernels as kernels

    monkeypatch.setattr(kernels, "_SHRINK_MAX_M", shrink_max_m)
    launches = _record_launches(monkeypatch, kernels)
    case = LoraCase((5,), 40, 24, 4, 2.0, "float32", x_requires_grad=True, seed=2)
    x, W, A, B = (t.requires_grad_(i != 1) for i, t in enumerate(lora_make_call(case, "cpu").args))
    kernels.lora_linear(x, W, A, B, scaling=2.0).sum().backward()
    joined = [(5, 24, 4), (5, 40, 4)]  # y with t, dx with u
    alone = [(5, 4, 0), (5, 24, 0), (5, 4, 0), (5, 40, 0)]  # t, y, u, dx
    assert sorted(launches) == sorted([*(joined if shrink_max_m else alone), (4, 40, 0), (24, 4, 0)])
    assert not any(launch[:2] in ((24, 40), (40, 24)) for launch in launches)  # B·A (out, in) or its transpose: never
    assert W.grad is None and A.grad is not None and B.grad is not None and x.grad is not None


def test_triton_lora_with_the_shrink_launched_alone_holds_the_contract(monkeypatch):
    """The contract's cases on the CPU have at most 16 tokens, so test_contracts holds only the joined launches to it:
    here the others (each shrink in its own launch, as above _SHRINK_MAX_M tokens), on the contract's examples."""
    impl = discover("lora")["triton_lora"]
    if impl.unavailable_reason("cpu") is not None:
        pytest.skip(impl.unavailable_reason("cpu"))
    from llmopt.bench.verify import verify
    from llmopt.impls.lora import _triton_lora_kernels as kernels
    from llmopt.reference import contracts

    monkeypatch.setattr(kernels, "_SHRINK_MAX_M", 0)
    outcome = verify(contracts()["lora"], impl, "cpu", max_examples=0)
    assert outcome.ok, [f"{p.name}: {p.message}" for p in outcome.properties if p.status == "fail"]
    assert any(p.status == "pass" for p in outcome.properties)


@pytest.mark.parametrize("shrink_max_m", [32, 0], ids=["shrink joined", "shrink launched alone"])
def test_triton_lora_holds_the_contract_over_two_blocks_of_rows(monkeypatch, shrink_max_m):
    """The contract's CPU cases have at most 16 tokens, one block of rows of the interpreter's tile: here 20 tokens (two
    blocks, the second partial) and rank 17 (a padded block of the rank), so each program's own rows of t and u are
    what it computes, stores and uses, joined or launched alone."""
    impl = discover("lora")["triton_lora"]
    if impl.unavailable_reason("cpu") is not None:
        pytest.skip(impl.unavailable_reason("cpu"))
    from llmopt.bench.verify import verify
    from llmopt.impls.lora import _triton_lora_kernels as kernels
    from llmopt.reference import contracts

    monkeypatch.setattr(kernels, "_SHRINK_MAX_M", shrink_max_m)
    case = LoraCase((4, 5), 33, 40, 17, 2.0, "float32", x_requires_grad=True, seed=7)
    outcome = verify(contracts()["lora"], impl, "cpu", replay=case)
    assert outcome.ok, [f"{p.name}: {p.message}" for p in outcome.properties if p.status == "fail"]
    assert sum(p.status == "pass" for p in outcome.properties) >= 4


@pytest.mark.parametrize("b_layout", ["row-major", "column-major"])
def test_past_32_tokens_only_a_k_contiguous_shrink_joins(monkeypatch, b_layout):
    """Past 32 tokens a shrink joins its product's launch only when its operand is K-contiguous (a shrink operand
    contiguous along the rank faulted there on the H100): at 40 tokens the forward's Aᵀ (row-major A) joins, the
    backward's B joins only when B is stored column-major; either way the contract holds on that case."""
    impl = discover("lora")["triton_lora"]
    if impl.unavailable_reason("cpu") is not None:
        pytest.skip(impl.unavailable_reason("cpu"))
    from llmopt.bench.verify import verify
    from llmopt.impls.lora import _triton_lora_kernels as kernels
    from llmopt.reference import contracts

    launches = _record_launches(monkeypatch, kernels)
    case = LoraCase((40,), 33, 24, 17, 2.0, "float32", x_requires_grad=True, seed=5)
    x, W, A, B = (t.requires_grad_(i != 1) for i, t in enumerate(lora_make_call(case, "cpu").args))
    if b_layout == "column-major":
        B = B.detach().mT.contiguous().mT.requires_grad_()
    y = kernels.lora_linear(x, W, A, B, scaling=2.0)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad(y, (x, A, B), dy)
    assert launches[0] == (40, 24, 17)  # y (40, out) with t: forward, Aᵀ K-contiguous
    assert ((40, 33, 17) in launches) == (b_layout == "column-major")  # dx (40, in) with u: backward, B

    exact = [t.detach().double().requires_grad_() for t in (x, A, B)]
    y64 = exact[0] @ W.double().T + 2.0 * (exact[0] @ exact[1].T) @ exact[2].T
    for got, want in zip((y, *grads), (y64, *torch.autograd.grad(y64, exact, dy.double()))):
        assert (got.double() - want).abs().max() <= 1e-5 * want.abs().max()  # fp32 IEEE dots against float64
    if b_layout == "row-major":  # the contract's layout: its properties on this case
        outcome = verify(contracts()["lora"], impl, "cpu", replay=case)
        assert outcome.ok, [f"{p.name}: {p.message}" for p in outcome.properties if p.status == "fail"]


@pytest.mark.parametrize("rank", [64, 65])
def test_the_joined_shrink_takes_ranks_up_to_one_block(monkeypatch, rank):
    """A joined shrink holds the rank in one BLOCK_R (at most 64): rank 64 joins, rank 65 takes its own launch, and
    both hold the contract (rank 65 joined would drop the rank's last column)."""
    impl = discover("lora")["triton_lora"]
    if impl.unavailable_reason("cpu") is not None:
        pytest.skip(impl.unavailable_reason("cpu"))
    from llmopt.bench.verify import verify
    from llmopt.impls.lora import _triton_lora_kernels as kernels
    from llmopt.reference import contracts

    launches = _record_launches(monkeypatch, kernels)
    case = LoraCase((3,), 16, 24, rank, 2.0, "float32", x_requires_grad=True, seed=11)
    outcome = verify(contracts()["lora"], impl, "cpu", replay=case)
    assert outcome.ok, [f"{p.name}: {p.message}" for p in outcome.properties if p.status == "fail"]
    assert any(joined_rank for _, _, joined_rank in launches) == (rank <= kernels._SHRINK_MAX_RANK)


@pytest.mark.parametrize("mutate,expected", [
    (lambda args: (args[0], args[1].requires_grad_(), args[2], args[3]), "frozen base weight"),
    (lambda args: (args[0], args[1], args[2], args[3][:, :-1]), "B (out, r)"),
    (lambda args: (args[0][..., :-1], args[1], args[2], args[3]), "x must be non-empty (..., in)"),
    (lambda args: (args[0], args[1].double(), args[2], args[3]), "share one dtype and device"),
])
def test_validation_names_the_expected_layout(mutate, expected):
    call = lora_make_call(LoraCase((2,), 16, 8, 4, seed=1), "cpu")
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        check_lora_call(Call(mutate(list(call.args)), call.kwargs))
    with pytest.raises(ValueError, match="scaling"):
        check_lora_call(Call(call.args, {"scaling": True}))


@pytest.mark.parametrize("mode", ["fwd", "bwd"])
def test_the_cost_counts_the_products_autograd_runs(mode):
    """lora_cost's FLOPs are the matrix products the reference runs (torch's FlopCounterMode), forward and the
    benchmark's backward (every input but the frozen W differentiated: no dW); QLoRA's are LoRA's."""
    from llmopt.reference import lora, qlora
    from torch.utils.flop_counter import FlopCounterMode

    case = lora.LoraCase((3, 5), 24, 40, 4, 2.0, "float64", x_requires_grad=True)
    x, W, A, B = lora.lora_make_call(case, "cpu").args
    x, A, B = (t.detach().requires_grad_() for t in (x, A, B))
    with FlopCounterMode(display=False) as forward:
        y = lora.lora_linear(x, W, A, B, scaling=case.scaling)
    with FlopCounterMode(display=False) as backward:
        torch.autograd.grad(y, (x, A, B), torch.randn_like(y))
    counted = forward if mode == "fwd" else backward
    assert lora.lora_cost(case, mode).flops == counted.get_total_flops()
    quantized = qlora.QLoraCase(case.batch, case.n_in, case.n_out, case.rank, case.scaling, "float32", True)
    assert qlora.qlora_cost(quantized, mode).flops == lora.lora_cost(case, mode).flops


def test_one_token_gemvs_of_real_weights_are_autotuned(monkeypatch):
    """_fixed_tile on the GPU: the contract's small shapes run the family's first tile, but a one-token product over a
    real weight (a GEMV streaming 4096 x 11008) is autotuned: the threshold counts elements read, not M·N·K."""
    pytest.importorskip("triton")
    from llmopt.impls.lora import _triton_lora_kernels as kernels

    monkeypatch.setattr(kernels, "_INTERPRET", False)
    assert kernels._fixed_tile(1, 11008, 4096, torch.bfloat16) is None
    assert kernels._fixed_tile(16, 4096, 8192, torch.bfloat16) is None  # dA at 8192 tokens: u^T (16, 8192) x
    assert kernels._fixed_tile(66, 128, 128, torch.bfloat16) == kernels._WIDE[0]  # the contract's largest
    assert kernels._fixed_tile(1, 128, 128, torch.bfloat16) == kernels._SKINNY[0]
    assert kernels._fixed_tile(1, 128, 128, torch.float32) == kernels._FLOAT32_TILE
