"""Every contract over every impl available here: each impl holds the whole contract within verify's default budget (on
CUDA each in its own process, known library failures expected); every known-wrong impl in
tests/known_wrong/<technique>.py is rejected by `llmopt verify` (exit 1), and every correct one in
tests/known_right/<technique>.py passes (exit 0)."""
from __future__ import annotations

import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from llmopt.bench.cli import main
from llmopt.bench.verify import verify
from llmopt.impls import discover
from llmopt.reference import contracts

HERE = Path(__file__).parent


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


_PADDED_VIEW_FAULT = "misaligned-address fault on q/k/v that are views at an offset into a larger buffer (padded_view)"
# Library impls the contract rejects on the GPU host (findings recorded in results/h100/verify.jsonl). Expected to fail
# there; strict, so a library release that fixes one turns the test red until its entry goes.
KNOWN_LIBRARY_FAILURES = {
    ("attention", "sdpa_flash"): f"torch SDPA flash backend: {_PADDED_VIEW_FAULT}",
    ("attention", "sdpa_efficient"): f"torch SDPA memory-efficient backend: {_PADDED_VIEW_FAULT}",
    ("attention", "sdpa_cudnn"): "torch SDPA cuDNN backend: NaN outputs on padded_view inputs",
    ("attention", "fa4"): "FlashAttention-4: dq wrong at head dim 40 with GQA and causal N != M",
    ("nf4_matmul", "bnb_matmul_4bit"): "bitsandbytes matmul_4bit: misaligned-address fault on one token of x "
                                       "that does not start on 16 bytes (sliced x; any dtype or blocksize: "
                                       "results/h100/probes/2026-12-07-bnb-one-token-alignment-probe.json)",
}


def _available():
    """(technique, impl, device) for every impl that runs here; CUDA ones carry the gpu mark, and known library
    failures on CUDA an xfail with the finding."""
    params = []
    for device in DEVICES:
        for t in sorted(contracts()):
            for name, impl in sorted(discover(t).items()):
                if impl.unavailable_reason(device) is not None:
                    continue
                marks = [pytest.mark.gpu] if device == "cuda" else []
                if device == "cuda" and (t, name) in KNOWN_LIBRARY_FAILURES:
                    marks.append(pytest.mark.xfail(reason=KNOWN_LIBRARY_FAILURES[t, name], strict=True))
                params.append(pytest.param(t, name, device, marks=marks))
    return params


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
    if device == "cuda":  # own process, as `llmopt verify` does on CUDA: a kernel's sticky fault fails only that impl
        verified = subprocess.run([sys.executable, "-m", "llmopt.bench.cli", "verify", technique, "--impl", name,
                                   "--device", "cuda"], capture_output=True, text=True, check=False)
        assert verified.returncode == 0, (verified.stdout + verified.stderr)[-4000:]
        assert "  pass " in verified.stdout  # at least one property held
        return
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


def test_a_case_field_added_later_keeps_earlier_case_ids_and_replays():
    """LoraCase.frozen came after results were recorded: a case at its default keeps the id it had (rows in results/
    and asv's parameters still match), a case that sets it is named by it, and a --replay written before it (without
    the field) still loads; a missing original field or an unknown one is still refused."""
    import dataclasses
    import json

    from llmopt.reference.lora import LORA_EXAMPLES

    contract = contracts()["lora"]
    case = LORA_EXAMPLES[0]
    assert contract.case_id(case) == ("batch=(3,),n_in=33,n_out=40,rank=8,scaling=2.0,dtype=float32,"
                                      "x_requires_grad=True,layout=contiguous,b_scale=1.0")
    assert contract.case_id(dataclasses.replace(case, frozen="A")).endswith(",b_scale=1.0,frozen=A")
    fields = {k: v for k, v in dataclasses.asdict(case).items() if k != "frozen"}
    assert contract.case_from_json(json.dumps(fields)) == case
    for broken in ({k: v for k, v in fields.items() if k != "seed"}, {**fields, "frozn": "A"}):
        with pytest.raises(ValueError, match="optionally"):
            contract.case_from_json(json.dumps(broken))
