"""The verification driver: who an exception is charged to (the impl, or the contract's own code), and what happens
when a call leaves the device unusable (a sticky CUDA fault, such as an illegal memory access: every later call in the
process raises too). The failure is charged to the case that faulted, not to a case hypothesis shrank to from calls
that could no longer run, and the properties after it are marked not run. Simulated on the CPU: an impl that "faults"
on one shape and raises on every call after it, and a device check that says so."""
import pytest
import torch
from llmopt.bench import verify as driver
from llmopt.impls import Impl
from llmopt.reference import contracts
from llmopt.reference.lora import lora_linear

FAULT = "CUDA error: an illegal memory access was encountered"


def poisoning_impl(faults_on):
    """A correct LoRA linear that faults on shapes where faults_on(x, W) holds, and raises on every call after."""
    poisoned = []

    def fn(x, W, A, B, *, scaling):
        if poisoned or faults_on(x, W):
            poisoned.append(tuple(x.shape) + tuple(W.shape))
            raise RuntimeError(FAULT)
        return lora_linear(x, W, A, B, scaling=scaling)

    return Impl("lora", "poisoning", fn, "user", ("cpu",)), poisoned


@pytest.mark.parametrize("where,faults_on", [
    ("a drawn case", lambda x, W: W.shape[0] == 3),  # no fixed example has out = 3: hypothesis draws it
    ("a fixed example", lambda x, W: W.shape[0] == 40),  # the contract's first example
])
def test_a_call_that_loses_the_device_is_reported_at_the_case_that_faulted(monkeypatch, where, faults_on):
    impl, poisoned = poisoning_impl(faults_on)
    monkeypatch.setattr(driver, "_device_fault", lambda device: f"RuntimeError: {FAULT}" if poisoned else None)
    outcome = driver.verify(contracts()["lora"], impl, "cpu", max_examples=30)

    lost = [p for p in outcome.properties if p.status == "fail"]
    assert len(lost) == 1 and lost[0].device_lost, [(p.name, p.status) for p in outcome.properties]
    assert lost[0].case.n_out == (3 if where == "a drawn case" else 40)  # the faulting shape, not a shrunk one
    assert "left the device unusable" in lost[0].message and FAULT in lost[0].message
    assert f'"n_out":{lost[0].case.n_out}' in lost[0].replay.replace(" ", "")
    after = outcome.properties[outcome.properties.index(lost[0]) + 1:]
    assert after and all(p.status == "not run" and p.examples == 0 for p in after)
    assert not outcome.ok


def test_a_failure_that_leaves_the_device_working_is_still_shrunk(monkeypatch):
    """The same impl, its device check saying the device still works: an ordinary failure, shrunk as before, and
    the later properties run (and fail on every case, since this impl raises on every call after its first)."""
    impl, poisoned = poisoning_impl(lambda x, W: W.shape[0] == 3)
    monkeypatch.setattr(driver, "_device_fault", lambda device: None)
    outcome = driver.verify(contracts()["lora"], impl, "cpu", max_examples=30)
    assert poisoned and not any(p.device_lost or p.status == "not run" for p in outcome.properties)
    assert sum(p.status == "fail" for p in outcome.properties) > 1
    first = next(p for p in outcome.properties if p.status == "fail")
    assert poisoned[0][-2] == 3 and first.case.n_out != 3  # faulted at out = 3, reported at a shrunk case


def test_an_exception_is_charged_to_the_impl_only_when_the_impl_was_running():
    """An exception other than a property's failure comes from the impl (its function on the stack when it was
    raised) or from the contract's own code (its oracle, its checks): the message names which, so that a harness error
    (such as indexing a CPU tensor with a CUDA mask in the oracle) never reads as the impl's."""
    from types import SimpleNamespace

    from llmopt.reference.lora import LoraCase

    def raising_impl(x, W, A, B, *, scaling):
        raise RuntimeError("the kernel's own error")

    def oracle_that_breaks(impl, case, device):
        return torch.zeros(2)[torch.ones(3, dtype=torch.bool)]  # a mask of the wrong size: the oracle's bug

    def check_calling_the_impl(impl, case, device):
        return impl.fn(None, None, None, None, scaling=1.0)

    case = LoraCase((3,), 8, 8, 2, 1.0, "float32", seed=1)
    impl = Impl("lora", "raising", raising_impl, "user", ("cpu",))
    messages = {}
    for name, check in (("oracle", oracle_that_breaks), ("impl", check_calling_the_impl)):
        result = driver.PropertyResult(name, "pass")
        prop = SimpleNamespace(applies=lambda impl, case: True, check=check)
        assert not driver.check_property(contracts()["lora"], prop, impl, "cpu", case, result)
        messages[name] = result.message
    assert messages["impl"].startswith("the impl raised RuntimeError: the kernel's own error")
    assert messages["oracle"].startswith("the contract's own code raised IndexError")
    assert "oracle_that_breaks" in messages["oracle"] and "not running" in messages["oracle"]


def test_an_exception_in_the_backward_of_an_impl_autograd_function_is_charged_to_the_impl():
    """A property's backward() runs the impl's autograd Function: an error raised in its backward is the impl's, though
    the impl's function has returned."""
    from types import SimpleNamespace

    from llmopt.reference.lora import LoraCase

    class Broken(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, dy):
            raise RuntimeError("the backward's own error")

    def impl_fn(x, W, A, B, *, scaling):
        return Broken.apply(x)

    def check_running_backward(impl, case, device):
        impl.fn(torch.ones(2, requires_grad=True), None, None, None, scaling=1.0).sum().backward()

    case = LoraCase((3,), 8, 8, 2, 1.0, "float32", seed=1)
    impl = Impl("lora", "broken_backward", impl_fn, "user", ("cpu",))
    result = driver.PropertyResult("grads", "pass")
    prop = SimpleNamespace(applies=lambda impl, case: True, check=check_running_backward)
    assert not driver.check_property(contracts()["lora"], prop, impl, "cpu", case, result)
    assert result.message.startswith("the impl raised RuntimeError: the backward's own error")
