"""The attention reference itself: the online-softmax tiled form equals the naive one to 1e-12 in float64 over the
contract's cases (masks, windows, GQA, N != M); the mask geometry is the contract's; bad inputs get ValueErrors that
name the expected layout; the cases' layouts, score range and oracle cache are what the properties rely on."""
import math

import pytest
import torch
from hypothesis import given, settings
from llmopt.impls import Impl
from llmopt.reference.attention import (
    CONTRACT,
    EXAMPLES,
    AttentionCase,
    _dout,
    _Oracle,
    attention,
    attention_tiled,
    check_qkv,
    make_call,
    score_conditioning,
    visible,
)
from llmopt.reference.contract import Call

EVERYTHING = Impl("attention", "any", attention, "user", ("cpu",))


@settings(max_examples=40)
@given(CONTRACT.cases(EVERYTHING, "cpu"))
def test_tiled_equals_naive_in_float64(case):
    q, k, v = (t.double() for t in make_call(case, "cpu").args)
    kwargs = {"causal": case.causal, "scale": case.scale, "window": case.window}
    naive = attention(q, k, v, **kwargs)
    tiled = attention_tiled(q, k, v, **kwargs, block_m=16, block_n=16)
    assert torch.isfinite(naive).all()
    assert (tiled - naive).abs().max() <= 1e-12 * max(1.0, float(naive.abs().max()))


def test_mask_geometry_is_bottom_right():
    assert visible(2, 5, causal=True, window=(-1, -1)).tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert visible(5, 2, causal=True, window=(-1, -1)).tolist() == [[0, 0], [0, 0], [0, 0], [1, 0], [1, 1]]
    assert visible(3, 3, causal=False, window=(1, 0)).tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]


def test_rows_without_keys_are_zero_and_gqa_reads_h_over_group():
    case = AttentionCase(1, 4, 2, 5, 2, 8, causal=True, dtype="float64")
    q, k, v = make_call(case, "cpu").args
    out = attention(q, k, v, causal=True)
    assert (out[:, :, :3] == 0).all()
    expected = attention(q[:, 3:4], k[:, 1:2], v[:, 1:2], causal=True)  # query head 3 reads KV head 3 // 2 = 1
    assert torch.equal(out[:, 3:4], expected)


@pytest.mark.parametrize("args,kwargs,message", [
    ((torch.zeros(1, 2, 3), torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3, 4)), {}, "4-D"),
    ((torch.zeros(1, 3, 3, 4), torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4)), {}, "multiple of Hkv"),
    ((torch.zeros(1, 2, 3, 4), torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 5, 4)), {}, "same shape"),
    ((torch.zeros(1, 2, 3, 4), torch.zeros(1, 1, 3, 8), torch.zeros(1, 1, 3, 8)), {}, "head dim must match"),
    ((torch.zeros(1, 2, 3, 4), torch.zeros(1, 1, 3, 4).half(), torch.zeros(1, 1, 3, 4)), {}, "share a dtype"),
    ((torch.zeros(1, 2, 0, 4), torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3, 4)), {}, "empty dimension"),
    ((torch.zeros(1, 2, 3, 4), torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3, 4)), {"window": (-2, 0)}, "window"),
    ((torch.zeros(1, 2, 3, 4), torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3, 4)), {"scale": float("nan")}, "scale"),
    ((torch.zeros(1, 2, 3, 4), torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3, 4)), {"scale": -0.5}, ">= 0"),
    ((torch.zeros(1, 2, 3, 4), torch.zeros(1, 1, 3, 4), torch.zeros(1, 1, 3, 4)), {"mask": None}, "keywords"),
])
def test_bad_inputs_name_what_was_expected(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_qkv(Call(args, kwargs))


def test_padded_views_are_poisoned_outside_the_view():
    q, _, _ = make_call(AttentionCase(1, 2, 1, 5, 3, 8, layout="padded_view"), "cpu").args
    assert torch.isfinite(q).all() and torch.isnan(q._base).any() and not q.is_contiguous()


def test_mixed_layout_gives_each_tensor_its_own_strides():
    """q a (B, N, H, D) view, k a padded view, v contiguous, and the output gradient padded too."""
    case = AttentionCase(1, 3, 1, 5, 7, 8, layout="mixed")
    q, k, v = make_call(case, "cpu").args
    dout = _dout(case, "cpu", torch.float32)
    assert q.transpose(1, 2).is_contiguous() and not q.is_contiguous()
    assert torch.isnan(k._base).any() and torch.isnan(dout._base).any() and torch.isfinite(dout).all()
    assert v.is_contiguous() and len({q.stride(), k.stride(), v.stride()}) == 3


def test_an_example_takes_scores_past_float32_exp_range():
    """A softmax that does not subtract the row max overflows float32's exp (past log(max) = 88.7) on the grid."""
    assert max(score_conditioning(case, "cpu") for case in EXAMPLES) > math.log(torch.finfo(torch.float32).max)


def test_the_oracle_is_bounded_by_bytes():
    small, large = AttentionCase(1, 1, 1, 2, 2, 8, seed=1), AttentionCase(1, 2, 1, 64, 64, 32, seed=2)
    oracle = _Oracle(max_bytes=3 * 64 * 32 * 8)  # one large entry (stick and eager) at most
    oracle(small, "cpu", False)
    oracle(large, "cpu", False)
    assert list(oracle.store) == [(large, "cpu", False)] and oracle.held == 2 * 64 * 32 * 8 + 2 * 64 * 32 * 4


