"""The machine a run is on: its short name (the results/<machine>/ folder), a description (GPU, CPU, Python, torch,
triton and optional library versions, git commit) and its peaks measured at the start of a run (device copy
bandwidth, large-matmul throughput). Importing this module initializes no CUDA; optional libraries are never
imported, only their installed versions read."""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import subprocess
from pathlib import Path

import torch
from llmopt.bench.timing import time_fn

REPO_ROOT = Path(__file__).resolve().parent.parent

# Key in `versions` -> distribution names (first installed wins), read with importlib.metadata.
LIBRARIES = {
    "triton": ("triton",),
    "flash_attn": ("flash-attn",),
    "fa4": ("flash-attn-4",),
    "vllm": ("vllm",),
    "flashinfer": ("flashinfer-python", "flashinfer"),
    "bitsandbytes": ("bitsandbytes",),
    "peft": ("peft",),
    "transformers": ("transformers",),
}

# Datasheet dense (no sparsity) bf16/fp16 tensor-core TFLOP/s, by machine name.
DATASHEET_DENSE_TFLOPS = {"h100": 989.4, "h100-pcie": 756.5, "h100-nvl": 835.5, "h200": 989.4, "h200-nvl": 835.5,
                          "a100": 312.0, "a100-pcie": 312.0}

# Words of a GPU name that say nothing about its speed: vendor, memory size and type, the SXM form factor.
_NAME_NOISE = re.compile(r"^(nvidia|sxm\d*|\d+gb|hbm\d*e?)$")


def gpu_slug(gpu_name: str) -> str:
    """"NVIDIA H100 80GB HBM3" -> "h100", "NVIDIA A100-SXM4-40GB" -> "a100", "NVIDIA H100 PCIe" -> "h100-pcie",
    "NVIDIA GeForce RTX 4090" -> "geforce-rtx-4090": the words that tell the chip and its power class."""
    words = re.split(r"[^a-z0-9]+", gpu_name.lower())
    return "-".join(w for w in words if w and not _NAME_NOISE.match(w)) or "gpu"


def machine_name(device: str) -> str:
    """"local" for CPU-only runs, else the slug of the current CUDA device's name."""
    return gpu_slug(torch.cuda.get_device_name()) if device == "cuda" else "local"


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")  # Linux; elsewhere platform's name
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    return model or platform.processor() or platform.machine()


def _installed_version(distributions: tuple[str, ...]) -> str | None:
    for distribution in distributions:
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def versions() -> dict[str, str]:
    """python, torch, cuda (when torch has it) and every installed library of LIBRARIES, by key."""
    found = {"python": platform.python_version(), "torch": torch.__version__}
    if torch.version.cuda:
        found["cuda"] = torch.version.cuda
    for key, distributions in LIBRARIES.items():
        version = _installed_version(distributions)
        if version is not None:
            found[key] = version
    return found


COMMIT_ENV = "LLMOPT_COMMIT"  # the commit, given by whoever carries the tree to a host where git cannot read it


def git_commit() -> str | None:
    """HEAD of the repository, "-dirty" appended when tracked files outside results/ differ from it (recorded rows
    themselves do not dirty the tree); LLMOPT_COMMIT when set; None outside git or before the first commit."""
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV]

    def git(*args):
        return subprocess.run(["git", "-c", "safe.directory=*", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True).stdout

    try:
        head = git("rev-parse", "--verify", "HEAD").strip()
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results").strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


def describe(device: str) -> dict:
    """{"machine", "gpu" (name, None on CPU), "cpu", "versions": {...}, "commit"} for results rows."""
    return {"machine": machine_name(device), "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
            "cpu": _cpu_name(), "versions": versions(), "commit": git_commit()}


def _copy_gbps(nbytes: int, device: str) -> float:
    """Bytes read + written per second (1e9 B/s) by a device-to-device copy of `nbytes`."""
    source = torch.empty(nbytes, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    return 2 * nbytes / time_fn(lambda: target.copy_(source), device).median_ms / 1e6


def _matmul_tflops(n: int, dtype: torch.dtype, device: str) -> float:
    """TFLOP/s of an (n, n) @ (n, n) matmul of random data, counted as 2 n^3 FLOPs."""
    a = torch.randn(n, n, device=device, dtype=dtype)  # (n, n)
    b = torch.randn(n, n, device=device, dtype=dtype)  # (n, n)
    return 2 * n**3 / time_fn(lambda: a @ b, device).median_ms / 1e9


PEAKS_ENV = "LLMOPT_PEAKS"  # JSON of measure_peaks' result, shared by the processes of one run


def measure_peaks(device: str) -> dict:
    """Measured peaks of `device`: "copy_gbps" (device-to-device copy), "matmul_tflops" and "matmul_dtype" (square
    matmul). GPU: 2 GiB copy, bf16 n = 8192; CPU: 256 MiB copy, float32 n = 2048. Medians over repetitions timed as
    benchmarks are (llmopt.bench.timing)."""
    if os.environ.get(PEAKS_ENV):  # measured once by the parent of isolated per-impl runs
        return json.loads(os.environ[PEAKS_ENV])
    n, dtype = (8192, torch.bfloat16) if device == "cuda" else (2048, torch.float32)
    return {"copy_gbps": _copy_gbps(2**31 if device == "cuda" else 2**28, device),
            "matmul_tflops": _matmul_tflops(n, dtype, device), "matmul_dtype": str(dtype).removeprefix("torch.")}
