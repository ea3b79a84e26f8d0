"""bench/gpu_carry packs wheels for a registry-less GPU host: every kept member survives LZMA recompression byte for
byte, vLLM's unused members are dropped, a file larger than a carry comes back whole when its parts are joined (as the
session's install joins them), and no carry exceeds its size."""
from __future__ import annotations

import os
import zipfile

from llmopt.bench import gpu_carry


def _wheel(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as wheel:
        for name, data in members.items():
            wheel.writestr(name, data)
    return path


def test_carries_hold_every_kept_member_and_respect_their_size(tmp_path):
    big = {"vllm/__init__.py": b"x = 1\n", "vllm/vllm_flash_attn/_C.so": os.urandom(3 << 20),
           "vllm/vllm-rs": os.urandom(1 << 20), "vllm/third_party/deep_gemm/include/a.hpp": b"int a;\n"}
    small = {"tiny/__init__.py": b"print('tiny')\n" * 100}
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels / "vllm-0.26.0-cp38-abi3-manylinux_2_28_x86_64.whl", big)
    _wheel(wheels / "tiny-1.0-py3-none-any.whl", small)
    out = tmp_path / "carry"
    assert gpu_carry.main([str(out), str(wheels), "--mib", "2"]) == 0

    carries = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(carries) >= 2
    assert all(sum(f.stat().st_size for f in c.iterdir()) <= 2 * gpu_carry.MIB for c in carries)
    parts = sorted(f for c in carries for f in c.iterdir() if ".whl.part-" in f.name)
    assert parts, "the 3 MiB wheel was not split"
    joined = tmp_path / "vllm-0.26.0-cp38-abi3-manylinux_2_28_x86_64.whl"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    with zipfile.ZipFile(joined) as wheel:
        assert sorted(wheel.namelist()) == ["vllm/__init__.py", "vllm/vllm_flash_attn/_C.so"]
        assert all(info.compress_type == zipfile.ZIP_LZMA for info in wheel.infolist())
        assert wheel.read("vllm/vllm_flash_attn/_C.so") == big["vllm/vllm_flash_attn/_C.so"]
    (tiny,) = [f for c in carries for f in c.iterdir() if f.name.startswith("tiny-")]
    with zipfile.ZipFile(tiny) as wheel:
        assert wheel.read("tiny/__init__.py") == small["tiny/__init__.py"]
