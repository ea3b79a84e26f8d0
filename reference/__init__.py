"""The contracts: one module per technique defines CONTRACT (or CONTRACTS, a list); `contracts()` finds them."""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil

_NOT_CONTRACTS = {"contract", "tolerance"}


def contracts() -> dict:
    """Every contract of this package, by technique name (imports only torch)."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name in _NOT_CONTRACTS:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for contract in getattr(module, "CONTRACTS", [getattr(module, "CONTRACT", None)]):
            if contract is not None:
                found[contract.name] = contract
    return found


def get_contract(technique: str):
    """The contract of `technique` (from the module of that name when there is one); ValueError listing the known
    techniques otherwise."""
    if importlib.util.find_spec(f"{__name__}.{technique}") is not None:
        module = importlib.import_module(f"{__name__}.{technique}")
        for contract in getattr(module, "CONTRACTS", [getattr(module, "CONTRACT", None)]):
            if contract is not None and contract.name == technique:
                return contract
    found = contracts()
    if technique not in found:
        raise ValueError(f"unknown technique {technique!r}; known: {', '.join(sorted(found))}")
    return found[technique]
