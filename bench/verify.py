"""The verification driver: every property of a contract over one impl ("deterministic" first, so that it sees the
impl's first call on each case), on the contract's fixed examples and then on cases hypothesis draws (derandomized,
no deadline); a failure is shrunk to a minimal case and comes back with
the property's message and a command that replays exactly that case. A call that leaves the device unusable (a sticky
CUDA fault, such as an illegal memory access, poisons the process's context) is reported at the case that faulted,
not at a case shrunk from calls that could no longer run, and the properties after it are marked not run."""
from __future__ import annotations

import inspect
import shlex
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
from llmopt.impls import Unsupported
from llmopt.reference.contract import Contract, Outcome, PropertyFailed

DEFAULT_EXAMPLES = {"cpu": 25, "cuda": 40, "interpret": 6}


@dataclass
class PropertyResult:
    name: str
    status: str  # "pass" | "fail" | "n/a" (applied to no case) | "not run" (the device was lost before it)
    examples: int = 0  # cases the property was checked on
    unsupported: int = 0  # cases the impl's library declined (llmopt.impls.Unsupported)
    max_margin: float | None = None
    case: object = None  # the minimal failing case
    message: str = ""
    replay: str = ""
    seconds: float = 0.0
    counts: dict = field(default_factory=dict)  # summed Outcome counts over the cases checked
    device_lost: bool = False  # `case` left the device unusable (it is the case that faulted, not a shrunk one)


@dataclass
class VerifyResult:
    technique: str
    impl: str
    device: str
    mode: str
    properties: list[PropertyResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No property failed and at least one held on some case (an impl that declines everything proves nothing)."""
        return all(p.status != "fail" for p in self.properties) and any(p.status == "pass" for p in self.properties)

    @property
    def status(self) -> str:
        return "verified" if self.ok else "failing"


class DeviceLost(Exception):
    """An impl call left the device unusable: nothing more can run on it in this process."""


def _device_fault(device: str) -> str | None:
    """None while `device` still runs work; else the error a trivial operation on it raises (after a sticky fault
    every later call on the context raises the same error)."""
    if device != "cuda":
        return None
    import torch

    try:
        torch.ones(1, device=device).add_(1).cpu()
        torch.cuda.synchronize()
    except Exception as error:  # noqa: BLE001 - whatever the device raises is the fault to report
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return None


def _in_autograd_backward(frame) -> bool:
    """The frame runs the backward of a torch.autograd.Function: an impl's (the contracts define none), called by
    autograd from a property's backward()."""
    import torch

    return (frame.f_code.co_name == "backward"
            and isinstance(frame.f_locals.get("ctx"), torch.autograd.function.BackwardCFunction))


def _failure_message(error: BaseException, impl) -> str:
    """The property's message; for any other exception, who raised it: the impl when its function or the backward of
    one of its autograd Functions was on the stack, else the contract's own code (its oracle, its checks), named with
    the line, so that a harness error never reads as the impl's."""
    if isinstance(error, PropertyFailed):
        return str(error)
    code = getattr(inspect.unwrap(impl.fn), "__code__", None)
    frames = list(traceback.walk_tb(error.__traceback__))
    if code is None or any(frame.f_code is code or _in_autograd_backward(frame) for frame, _ in frames):
        return f"the impl raised {type(error).__name__}: {error}"
    frame, line = frames[-1]
    return (f"the contract's own code raised {type(error).__name__}: {error} (in {frame.f_code.co_name}, "
            f"{Path(frame.f_code.co_filename).name}:{line}; the impl was not running: an error of the harness)")


def check_property(contract: Contract, prop, impl, device: str, case, result: PropertyResult) -> bool:
    """Run one property on one case, folding the outcome into `result`; True when it held or did not apply."""
    if not prop.applies(impl, case):
        return True
    grad_mode = torch.is_grad_enabled()
    try:
        try:
            margin = prop.check(impl, case, device)
            if device == "cuda":  # an asynchronous fault is charged to the case that caused it, not the next one
                torch.cuda.synchronize()
        finally:  # torch.set_grad_enabled called, not used as a context manager: the cause of whatever followed
            if torch.is_grad_enabled() != grad_mode:
                torch.set_grad_enabled(grad_mode)
                raise PropertyFailed(f"autograd's grad mode was switched {'off' if grad_mode else 'on'} by a call and "
                                     "never restored: every later forward in the process runs without (or with) a "
                                     "graph")
    except Unsupported:
        result.unsupported += 1
        return True
    except Exception as error:  # an impl that raises fails the property, with its message
        result.status, result.case, result.message = "fail", case, _failure_message(error, impl)
        if (fault := _device_fault(device)) is not None:
            result.device_lost = True
            result.message += (f"\n       and left the device unusable ({fault}): this is the case that faulted; "
                               "no later case or property could run")
            raise DeviceLost(result.message) from error
        return False
    result.examples += 1
    if isinstance(margin, Outcome):
        for key, value in margin.counts.items():
            result.counts[key] = result.counts.get(key, 0) + value
        margin = margin.margin
    if margin is not None:
        result.max_margin = margin if result.max_margin is None else max(result.max_margin, margin)
    return True


def _hypothesis_body(contract, prop, impl, device, result, failures, lost):
    """The function hypothesis drives for one property: records each failure (the last recorded is the minimal
    case hypothesis replays after shrinking) and raises so hypothesis shrinks. Once a call has lost the device
    (`lost` holds its message) nothing more runs and nothing more is recorded: every call raises at once."""

    def holds(case):
        if lost:
            raise DeviceLost(lost[0])
        try:
            held = check_property(contract, prop, impl, device, case, result)
        except DeviceLost as error:
            failures.append((result.case, result.message))
            lost.append(str(error))
            raise
        if not held:
            failures.append((result.case, result.message))
            result.status = "pass"
            raise PropertyFailed(result.message)

    return holds


def verify(contract: Contract, impl, device: str, *, impl_spec: str | None = None, max_examples: int | None = None,
           seed: int | None = None, replay=None, only: list[str] | None = None, on_property=None) -> VerifyResult:
    """Hold `impl` to every property of `contract` on `device`. `replay`: check only that case. `only`: property
    names to run. `on_property(result)` is called as each property finishes (progress)."""
    mode = impl.runs_on(device)
    impl = impl.for_mode(mode)
    outcome = VerifyResult(contract.name, impl.name, device, mode)
    budget = max_examples if max_examples is not None else impl.examples_budget.get(
        mode, contract.examples_budget.get(mode, DEFAULT_EXAMPLES[mode]))
    examples = [case for case in contract.examples(mode) if contract.unsupported(case, impl.supports) is None]
    strategy = contract.cases(impl, mode)
    lost = []  # the message of the call that lost the device, once one has
    # "deterministic" runs first, so its first call on each case is the impl's first there: an impl whose first call
    # differs from later ones (an autotuner that changes its choice, a cache built on the first call) is caught
    for prop in sorted(contract.properties, key=lambda p: p.name != "deterministic"):
        if only and prop.name not in only:
            continue
        result = PropertyResult(prop.name, "pass")
        if lost:
            result.status, result.message = "not run", "not run: the device was lost in an earlier property (above)"
            outcome.properties.append(result)
            if on_property:
                on_property(result)
            continue
        started = time.perf_counter()
        try:
            if replay is not None:
                check_property(contract, prop, impl, device, replay, result)
            elif all(check_property(contract, prop, impl, device, case, result) for case in examples) and budget > 0:
                failures = []
                holds = _hypothesis_body(contract, prop, impl, device, result, failures, lost)
                _explore(holds, strategy, budget, seed, result, failures, lost)
        except DeviceLost as error:
            if not lost:  # lost in the fixed examples (hypothesis's body records its own)
                lost.append(str(error))
        if result.status == "pass" and result.examples == 0:
            result.status = "n/a"
        if result.status == "fail":
            spec = impl_spec or impl.name
            result.replay = (f"llmopt verify {contract.name} --impl {shlex.quote(spec)} --device {device} "
                             f"--replay {shlex.quote(contract.case_to_json(result.case))}")
        result.seconds = time.perf_counter() - started
        outcome.properties.append(result)
        if on_property:
            on_property(result)
    return outcome


def _explore(holds, strategy, budget: int, seed: int | None, result: PropertyResult, failures: list,
             lost: list) -> None:
    """Drive `holds` over `budget` cases hypothesis draws (derandomized unless `seed`), shrinking a failure into
    `result`: the last failure `holds` recorded, the minimal case, or the case that lost the device (then DeviceLost
    is raised again)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    test = settings(max_examples=budget, derandomize=seed is None, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck), report_multiple_bugs=False, print_blob=False,
                    phases=[Phase.generate, Phase.shrink])(given(strategy)(holds))
    if seed is not None:
        test = hypothesis_seed(seed)(test)
    try:
        test()
    except Exception:  # hypothesis re-raises the minimal failure; we kept it
        if not failures:
            raise
        result.status, (result.case, result.message) = "fail", failures[-1]
        if lost:
            raise DeviceLost(lost[0]) from None
