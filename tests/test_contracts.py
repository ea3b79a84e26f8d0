"""Every contract over every impl available here: each impl holds the whole contract within verify's default
budget; every known-wrong impl in tests/known_wrong/<technique>.py is rejected by `llmopt verify` (exit 1), and every
correct one in tests/known_right/<technique>.py passes (exit 0)."""
from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest
import torch
from llmopt.bench.cli import main
from llmopt.bench.verify import verify
from llmopt.impls import discover
from llmopt.reference import contracts

HERE = Path(__file__).parent


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _available():
    """(technique, impl, device) for every impl that runs here; CUDA ones carry the gpu mark."""
    return [pytest.param(t, name, device, marks=[pytest.mark.gpu] if device == "cuda" else [])
            for device in DEVICES for t in sorted(contracts()) for name, impl in sorted(discover(t).items())
            if impl.unavailable_reason(device) is None]


def _user_functions(folder: str):
    found = []
    for path in sorted((HERE / folder).glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"{folder}_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        found += [(path.stem, name, path) for name, fn in vars(module).items()
                  if inspect.isfunction(fn) and fn.__module__ == module.__name__ and not name.startswith("_")]
    return found


@pytest.mark.parametrize("technique,name,device", _available())
def test_registered_impl_holds_its_contract(technique, name, device):
    contract = contracts()[technique]
    outcome = verify(contract, discover(technique)[name], device)
    failures = [f"{p.name}: {p.message}\n  {p.replay}" for p in outcome.properties if p.status == "fail"]
    assert outcome.ok, "\n".join(failures)
    assert any(p.status == "pass" for p in outcome.properties)


@pytest.mark.parametrize("technique,func,path", _user_functions("known_wrong"))
def test_known_wrong_impl_is_rejected(technique, func, path, capsys):
    assert main(["verify", technique, "--impl", f"{path}:{func}", "--device", "cpu"]) == 1
    assert "replay: llmopt verify" in capsys.readouterr().out


@pytest.mark.parametrize("technique,func,path", _user_functions("known_right"))
def test_known_right_impl_passes(technique, func, path):
    assert main(["verify", technique, "--impl", f"{path}:{func}", "--device", "cpu"]) == 0
