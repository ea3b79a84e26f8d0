"""The registry: unavailable impls say why and are never run; explicit requests fail with the valid names; declared
unsupported features skip cases instead of passing or failing them; a library's call-time refusal is counted as
unsupported, and an impl that declines every case is not verified."""
import pytest
from llmopt.bench.verify import verify
from llmopt.impls import Impl, ImplError, Unsupported, discover, get, register
from llmopt.reference.attention import CONTRACT, AttentionCase, attention


def test_missing_library_makes_an_impl_unavailable_with_its_reason():
    impl = Impl("attention", "needs_lib", attention, "library", ("cpu",), requires=("no_such_library_xyz",))
    assert "no_such_library_xyz" in impl.unavailable_reason("cpu")
    assert "not cpu" in Impl("attention", "gpu_only", attention, "library", ("cuda",)).unavailable_reason("cpu")


def test_explicit_request_for_unavailable_impl_names_the_alternatives():
    with pytest.raises(ImplError, match="available here: .*sdpa_math"):
        get("attention", "sdpa_cudnn", "cpu")
    with pytest.raises(ImplError, match="registered: .*sdpa_math"):
        get("attention", "nope", "cpu")


def test_register_rejects_bad_declarations():
    with pytest.raises(ValueError, match="kind"):
        register("attention", "x", kind="magic", devices=("cpu",))(attention)
    with pytest.raises(ValueError, match="devices"):
        register("attention", "x", kind="torch", devices=("tpu",))(attention)


def test_declared_unsupported_features_skip_cases():
    no_window = {"window": False, "dtypes": ("float32",)}
    assert CONTRACT.unsupported(AttentionCase(1, 1, 1, 4, 4, 32, window=(1, 1)), no_window) == "does not support window"
    assert "dtype" in CONTRACT.unsupported(AttentionCase(1, 1, 1, 4, 4, 32, dtype="float16"), no_window)
    assert CONTRACT.unsupported(AttentionCase(1, 1, 1, 4, 4, 32), no_window) is None
    per_mode = Impl("attention", "m", attention, "torch", ("cpu", "cuda"), supports={"backward": ("cuda",)})
    assert per_mode.for_mode("cpu").supports["backward"] is False
    assert per_mode.for_mode("cuda").supports["backward"] is True


def test_strategy_draws_only_supported_features():
    from hypothesis import given, settings

    impl = Impl("attention", "plain", attention, "torch", ("cpu",),
                supports={"window": False, "gqa": False, "causal_n_ne_m": False, "strided": False})

    @settings(max_examples=30)
    @given(CONTRACT.cases(impl, "cpu"))
    def drawn(case):
        assert case.window == (-1, -1) and case.Hq == case.Hkv and case.layout == "contiguous"
        assert not case.causal or case.N == case.M

    drawn()


def test_call_time_refusal_is_unsupported_and_declining_everything_is_not_verified():
    def declines(q, k, v, **kwargs):
        raise Unsupported("never")

    outcome = verify(CONTRACT, Impl("attention", "declines", declines, "user", ("cpu",)), "cpu", max_examples=2)
    assert not any(p.status == "fail" for p in outcome.properties)
    assert all(p.unsupported > 0 or p.status == "n/a" for p in outcome.properties)
    assert not outcome.ok


def test_discovery_lists_the_attention_impls():
    assert ({"sdpa_math", "sdpa_flash", "flex", "triton_flash", "fa4", "vllm_fa3", "flash_attn2"}
            <= set(discover("attention")))
