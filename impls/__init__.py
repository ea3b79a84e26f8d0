"""The impl registry: `@register(technique, name, ...)` where an impl is defined; `discover` imports the modules of
impls/<technique>/ (none of which imports an optional library at module level); an impl whose library or device
is missing is listed unavailable with its reason, and an explicit request for it fails, never falls back."""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DEVICES = ("cpu", "cuda", "interpret")  # interpret: CPU tensors through Triton's interpreter (TRITON_INTERPRET=1)
KINDS = ("reference", "torch", "library", "triton", "user")
IN_HOUSE_KIND, LIBRARY_KINDS = "triton", ("library", "torch")  # ours, and what we measure ourselves against


class Unsupported(Exception):
    """Raised by an impl when its library declares, at call time, that it cannot take these inputs (e.g. torch's
    SDPA backend checks). The harness counts the case as unsupported for that impl: neither a pass nor a fail."""


class ImplError(LookupError):
    """An impl was asked for that does not exist or cannot run here; the message lists the valid ones."""


@dataclass
class Impl:
    """One registered implementation of a technique's contract.

    fn:        callable with the contract's signature.
    supports:  features it does NOT do, as {feature: False} or {feature: (modes where it does)}; "dtypes": tuple of
               dtype names; "check": case -> reason. `for_mode(mode)` resolves the per-mode entries.
    requires:  modules that must be importable (checked with find_spec, never imported here).
    available: () -> reason or None, for checks beyond importability (GPU generation, a working import).
    prepare:   (*args, **kwargs) -> (run, to_contract), run() computes in the library's native layout and
               to_contract(out) converts back; used by bench so layout changes stay outside the timed region.
    examples_budget: {mode: hypothesis examples per property} for impls that compile a kernel per shape.
    """

    technique: str
    name: str
    fn: Callable
    kind: str
    devices: tuple[str, ...]
    supports: dict = field(default_factory=dict)
    requires: tuple[str, ...] = ()
    available: Callable[[], str | None] | None = None
    prepare: Callable | None = None
    source: str = ""
    examples_budget: dict = field(default_factory=dict)

    def unavailable_reason(self, device: str) -> str | None:
        """None when the impl can run on `device` ("cpu" or "cuda") here, else why not."""
        runs_on = self.runs_on(device)
        if runs_on is None:
            return f"runs on {'/'.join(self.devices)}, not {device}" + (
                " (Triton interpreter not enabled: TRITON_INTERPRET=1 is set only when there is no CUDA)"
                if device == "cpu" and "interpret" in self.devices else "")
        for module in self.requires:
            if importlib.util.find_spec(module.split(".")[0]) is None:
                return f"library {module!r} is not installed"
        if self.available is not None:
            return self.available()
        return None

    def for_mode(self, mode: str) -> Impl:
        """This impl with `supports` resolved for `mode` ("cpu", "cuda", "interpret"): a feature given as a tuple of
        modes becomes True or False."""
        resolved = {k: (mode in v) if k not in ("dtypes", "check") and isinstance(v, tuple) else v
                    for k, v in self.supports.items()}
        return dataclasses.replace(self, supports=resolved)

    def runs_on(self, device: str) -> str | None:
        """The mode this impl runs in on `device`: "cpu", "cuda", "interpret", or None."""
        if device == "cuda" and "cuda" in self.devices:
            return "cuda"
        if device == "cpu" and "cpu" in self.devices:
            return "cpu"
        if device == "cpu" and "interpret" in self.devices and os.environ.get("TRITON_INTERPRET") == "1":
            return "interpret"
        return None


_REGISTRY: dict[str, dict[str, Impl]] = {}


def enable_triton_interpreter_without_cuda() -> None:
    """Set TRITON_INTERPRET=1 when there is no CUDA device, so Triton impls run on CPU tensors through the
    interpreter. Call before anything imports triton (the CLI and the test suite do)."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


def register(technique: str, name: str, *, kind: str, devices: tuple[str, ...], supports: dict | None = None,
             requires: tuple[str, ...] = (), available: Callable[[], str | None] | None = None,
             prepare: Callable | None = None, examples_budget: dict | None = None) -> Callable:
    """Decorator: register `fn` as impl `name` of `technique`."""
    if kind not in KINDS:
        raise ValueError(f"impl {technique}/{name}: kind {kind!r} is not one of {KINDS}")
    if not devices or set(devices) - set(DEVICES):
        raise ValueError(f"impl {technique}/{name}: devices {devices!r} must be a non-empty subset of {DEVICES}")

    def decorator(fn: Callable) -> Callable:
        impls = _REGISTRY.setdefault(technique, {})
        if name in impls and impls[name].source != fn.__module__:
            raise ValueError(f"impl {technique}/{name} registered twice ({impls[name].source}, {fn.__module__})")
        impls[name] = Impl(technique, name, fn, kind, tuple(devices), dict(supports or {}), tuple(requires),
                           available, prepare, fn.__module__, dict(examples_budget or {}))
        return fn

    return decorator


def discover(technique: str) -> dict[str, Impl]:
    """Import every public module of impls/<technique>/ and return its impls by name."""
    package = f"{__name__}.{technique}"
    if importlib.util.find_spec(package) is None:
        return _REGISTRY.get(technique, {})
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(module.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
    return _REGISTRY.get(technique, {})


def get(technique: str, name: str, device: str) -> Impl:
    """The impl `name` of `technique`, runnable on `device`; ImplError naming the valid ones otherwise."""
    impls = discover(technique)
    if name not in impls:
        raise ImplError(f"no impl {name!r} of {technique}; registered: {', '.join(sorted(impls)) or 'none'}")
    reason = impls[name].unavailable_reason(device)
    if reason:
        usable = [n for n, impl in sorted(impls.items()) if impl.unavailable_reason(device) is None]
        raise ImplError(f"impl {technique}/{name} is unavailable on {device}: {reason}; "
                        f"available here: {', '.join(usable) or 'none'}")
    return impls[name]


def load_user_impl(technique: str, spec: str) -> Impl:
    """`FILE.py:FUNC` -> an Impl of kind "user": FILE is imported with its own folder first on sys.path."""
    path_text, _, func = spec.rpartition(":")
    path = Path(path_text)
    if not path_text or not func or path.suffix != ".py":
        raise ImplError(f"--impl {spec!r}: expected a registered name or FILE.py:FUNC")
    if not path.is_file():
        raise ImplError(f"--impl {spec!r}: no file {path}")
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        module_name = f"llmopt_user_{path.stem}_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        module_spec.loader.exec_module(module)
    except Exception as error:  # a user file that does not load is a usage error, reported with its cause
        raise ImplError(f"--impl {spec!r}: {path} does not load: {type(error).__name__}: {error}") from error
    finally:
        sys.path.remove(folder)
    fn = getattr(module, func, None)
    if not callable(fn):
        raise ImplError(f"--impl {spec!r}: {path} has no callable {func!r}")
    return Impl(technique, spec, fn, "user", ("cpu", "cuda"), {}, (), None, None, str(path))
