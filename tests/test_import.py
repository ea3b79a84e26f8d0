"""Importing llmopt (every package, every contract, every impl module) initializes no CUDA and imports no optional
library: those load only inside the impl that uses them or its availability check."""
import subprocess
import sys

OPTIONAL = ["bitsandbytes", "peft", "transformers", "vllm", "flash_attn", "flashinfer", "triton", "matplotlib", "asv"]

PROBE = f"""
import sys, torch
import llmopt.reference, llmopt.impls, llmopt.bench, llmopt.bench.cli, llmopt.bench.bench, llmopt.bench.report
from llmopt.reference import contracts
from llmopt.impls import discover
for technique in contracts():
    for impl in discover(technique).values():
        impl.runs_on("cpu")
loaded = [name for name in {OPTIONAL!r} if name in sys.modules]
print("LOADED", loaded, "CUDA", torch.cuda.is_initialized())
"""


def test_import_touches_no_gpu_and_no_optional_library():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    assert "LOADED [] CUDA False" in out, out


def test_contracts_are_found():
    from llmopt.reference import contracts

    assert "attention" in contracts()
