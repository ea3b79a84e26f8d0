"""The contract model: a technique is a reference, a signature with validation, cases, properties, a cost and
claims. Every technique module in this package builds one `Contract`; tests and benchmarks drive all of them
through this interface (see ARCHITECTURE.md)."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


def dtype_of(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}: expected one of {sorted(DTYPES)}")
    return DTYPES[name]


class Drawing(NamedTuple):
    """What a cases strategy may draw for an impl in a mode: `on(feature)` unless the impl declares it unsupported,
    `small` under Triton's interpreter (tiny cases), `dtypes` the impl's (no bfloat16 under the interpreter)."""

    on: Callable[[str], bool]
    small: bool
    dtypes: list[str]


# Field metadata for a case field added after results were recorded: case ids name it only where it is not its
# default, so the ids of earlier cases (rows in results/, asv's benchmark parameters) stay what they were, and a
# --replay written before it may leave it out.
NAMED_WHEN_SET = "named_when_set"
WHEN_SET = {NAMED_WHEN_SET: True}


def drawing(impl, mode: str, dtypes: tuple[str, ...] = ("float32", "float16", "bfloat16")) -> Drawing:
    """The Drawing of `impl` in `mode` ("cpu", "cuda", "interpret"); `dtypes`: the contract's, when the impl names
    none."""
    small = mode == "interpret"
    return Drawing(lambda feature: impl.supports.get(feature, True) is not False, small,
                   [d for d in impl.supports.get("dtypes", dtypes) if not (small and d == "bfloat16")])


class PropertyFailed(AssertionError):
    """A property of a contract does not hold for an impl on a case; the message says what and by how much."""


@dataclass(frozen=True)
class Call:
    """The positional and keyword arguments of one call with the contract's signature."""

    args: tuple
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Property:
    """A named law. `check(impl, case, device)` raises PropertyFailed or returns a margin (error / allowed, <= 1
    passes), None where a margin means nothing (exact laws), or an Outcome (a margin and counts to report).
    `applies(impl, case)` narrows it (e.g. to impls with a backward); a case it does not apply to is not counted."""

    name: str
    check: Callable[[Any, Any, str], float | None]
    applies: Callable[[Any, Any], bool] = lambda impl, case: True
    doc: str = ""


@dataclass(frozen=True)
class Outcome:
    """What a property found on one case when a margin alone does not say it: the margin (or None) and counts that the
    verify report sums over cases, e.g. {"exempt codes that differ": 3, "codes compared": 4096}."""

    margin: float | None = None
    counts: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Cost:
    """Work of one call: floating-point operations and the fewest bytes it must move through memory."""

    flops: float
    bytes: float


VERDICTS = ("confirmed", "wrong", "not yet checked", "not checkable here")


@dataclass(frozen=True)
class Claim:
    """One quantitative statement of the seed note, and what we found. `ours` is None until checked."""

    id: str
    statement: str
    seed_value: str
    unit: str
    ours: str | None
    method: str
    machine: str
    verdict: str

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"claim {self.id}: verdict {self.verdict!r} is not one of {VERDICTS}")
        if self.verdict in ("confirmed", "wrong") and self.ours is None:
            raise ValueError(f"claim {self.id}: a {self.verdict} claim needs our figure")


FIGURES = ("speedup", "roofline_pct")


@dataclass(frozen=True)
class Goal:
    """A performance target for an impl (an issue's goal), checked by `llmopt report` on each machine's newest rows.

    figure:    "speedup": the baseline's median latency over the impl's on the same case and mode, or
               "roofline_pct": the impl's % of the roofline measured in that run.
    baseline:  for "speedup", an impl name, or "best library": the fastest impl of kind library or torch on the case.
    applies:   (case, mode) -> bool, the bench cases the goal covers (all by default).
    The goal is met when every covered case measured reaches `threshold`."""

    id: str
    statement: str
    impl: str
    figure: str
    threshold: float
    baseline: str | None = None
    applies: Callable[[Any, str], bool] = lambda case, mode: True

    def __post_init__(self):
        if self.figure not in FIGURES:
            raise ValueError(f"goal {self.id}: figure {self.figure!r} is not one of {FIGURES}")
        if (self.figure == "speedup") != (self.baseline is not None):
            raise ValueError(f"goal {self.id}: a speedup goal names a baseline, a roofline goal none")


@dataclass
class Contract:
    """What a technique IS, for every impl of it.

    reference:      the plainest correct PyTorch function (the signature every impl accepts).
    validate:       (call) -> None, raising ValueError that names the expected layout; run before every impl call.
    case_type:      a frozen dataclass of one configuration (JSON round-trips it for --replay).
    cases:          (impl, mode) -> hypothesis strategy of case_type, drawing only features the impl supports;
                    mode is how the impl runs: "cpu", "cuda" or "interpret" (Triton's interpreter: tiny cases).
    make_call:      (case, device) -> Call, the inputs of a case (deterministic in the case's seed).
    properties:     the laws every impl must satisfy.
    bench_cases:    realistic sizes for `llmopt bench`; quick_cases: small ones for CPU and --quick.
    cost:           (case, mode) -> Cost, mode one of bench_modes ("fwd", and "bwd" where there is a backward).
    bench_modes:    what `llmopt bench` times: "fwd" the call, "bwd" autograd through it.
    frozen_args:    positions of tensor arguments that are never differentiated (a frozen base weight): "bwd" leaves
                    them without requires_grad.
    examples_budget: {mode: examples per property} where a technique's cases are costlier than verify's default.
    features:       (case) -> set of feature names the case needs; impls declare unsupported ones as False.
    claims:         () -> a sequence of Claim, the seed's numbers about this technique, recomputed.
    goals:          performance targets of the in-house impls (Goal), checked in the report against the libraries.
    baseline_impl:  the library impl the report's speedup table divides by (its goals name theirs).
    examples:       (mode) -> fixed cases run before hypothesis explores (the regression grid).
    """

    name: str
    reference: Callable
    validate: Callable[[Call], None]
    case_type: type
    cases: Callable[[Any, str], Any]
    make_call: Callable[[Any, str], Call]
    properties: list[Property]
    bench_cases: list
    quick_cases: list
    cost: Callable[[Any, str], Cost]
    features: Callable[[Any], set[str]]
    feature_names: tuple[str, ...]
    claims: Callable[[], Sequence[Claim]] = list
    goals: tuple[Goal, ...] = ()
    baseline_impl: str | None = None
    examples: Callable[[str], list] = lambda mode: []
    max_bench_cpu_flops: float = 2e9
    bench_modes: tuple[str, ...] = ("fwd",)
    frozen_args: tuple[int, ...] = ()
    examples_budget: dict = field(default_factory=dict)  # mode -> hypothesis examples per property, overriding verify's

    def case_to_json(self, case) -> str:
        return json.dumps(dataclasses.asdict(case), sort_keys=True, separators=(",", ":"))

    def case_from_json(self, text: str):
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"--replay expects a JSON object of {self.case_type.__name__} fields: {error}") from None
        names = {f.name for f in dataclasses.fields(self.case_type)}
        required = {f.name for f in dataclasses.fields(self.case_type) if not f.metadata.get(NAMED_WHEN_SET)}
        if not isinstance(fields, dict) or not required <= set(fields) <= names:
            raise ValueError(f"--replay expects a JSON object with exactly the fields {sorted(required)}"
                             + (f" (and optionally {sorted(names - required)})" if names - required else ""))
        return self.case_type(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})

    def case_id(self, case) -> str:
        """Every field but the seed, as k=v; a field marked NAMED_WHEN_SET only where it differs from its default."""
        unnamed = {f.name for f in dataclasses.fields(case)
                   if f.metadata.get(NAMED_WHEN_SET) and getattr(case, f.name) == f.default}
        return ",".join(f"{k}={v}" for k, v in dataclasses.asdict(case).items() if k != "seed" and k not in unnamed)

    def unsupported(self, case, supports: dict) -> str | None:
        """Why an impl with these `supports` cannot run this case, or None. Boolean features declared False,
        dtypes outside supports["dtypes"], and supports["check"](case) -> reason are honoured."""
        for feature in sorted(self.features(case)):
            if supports.get(feature, True) is False:
                return f"does not support {feature}"
        dtype = getattr(case, "dtype", None)
        if dtype is not None and "dtypes" in supports and dtype not in supports["dtypes"]:
            return f"does not support dtype {dtype}"
        if "check" in supports:
            return supports["check"](case)
        return None


def place_x(x: torch.Tensor, layout: str, dtype: torch.dtype, device: str) -> torch.Tensor:
    """x (*batch, n) in `dtype` on `device`, contiguous or a view of a NaN-filled larger buffer. "strided": every other
    column from the second of rows 2n + 2 wide (a storage offset, a row stride that is not n times the column stride),
    and with two or more batch dimensions the leading rows of one row more, so that the batch does not flatten to a
    single stride. "sliced": columns 3 .. n + 2 of rows n + 5 wide (a slice of a wider hidden state: unit column
    stride, rows apart by more than their width). The adapters' x and output gradient, and nf4_matmul's x, are placed
    so."""
    if layout == "contiguous":
        return x.to(device=device, dtype=dtype)
    if layout == "sliced":
        larger = torch.full((*x.shape[:-1], x.shape[-1] + 5), float("nan"), dtype=dtype, device=device)
        view = larger[..., 3:x.shape[-1] + 3]
        view.copy_(x.to(device=device, dtype=dtype))
        return view
    rows = x.shape[:-1] if x.dim() < 3 else (*x.shape[:-2], x.shape[-2] + 1)
    larger = torch.full((*rows, 2 * x.shape[-1] + 2), float("nan"), dtype=dtype, device=device)
    view = larger[..., 1:2 * x.shape[-1] + 1:2]
    if x.dim() >= 3:
        view = view[..., :x.shape[-2], :]
    view.copy_(x.to(device=device, dtype=dtype))
    return view


def copy_inputs_in_place(into: tuple, values: tuple, through_data: bool = False) -> None:
    """Write `values`' tensors into `into`'s (same shapes; NF4 states tensor by tensor), keeping their storage and
    strides: what an optimizer step does to an adapter and load_state_dict to a model's weights. `through_data`:
    written through `.data`, which leaves the tensors' version counters as they were (as older optimizers and weight
    loaders write): a cache keyed on address and version cannot see the change."""
    with torch.no_grad():
        for target, source in zip(into, values):
            for tensor, new in ([(target, source)] if isinstance(target, torch.Tensor) else
                                [(t, source.tensors()[n]) for n, t in getattr(target, "tensors", dict)().items()]):
                (tensor.data if through_data else tensor).copy_(new)
