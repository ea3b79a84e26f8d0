"""Static SASS view of a Triton kernel for a GPU this machine need not have: compiled for sm_XX by Triton with the ptxas
it ships, disassembled with its cuobjdump, the main loop's instructions counted by opcode beside registers, spills
and shared memory. Instructions per element compare issue-bound variants of a kernel without a GPU; only a GPU times
them."""
from __future__ import annotations

import collections
import inspect
import os
import re
import subprocess
import tempfile
from pathlib import Path

_INSTRUCTION = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[0-9T] )?([A-Z0-9]+)")
_BACKWARD_BRANCH = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[0-9T] )?BRA\s+0x([0-9a-f]+)")


def _tool(name: str) -> str:
    import triton
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def loop_mix(sass: str) -> dict:
    """The instructions of the longest loop (from a backward branch's target to the branch), counted by opcode."""
    loops = []
    for line in sass.splitlines():
        match = _BACKWARD_BRANCH.match(line)
        if match and int(match.group(2), 16) < int(match.group(1), 16):
            loops.append((int(match.group(2), 16), int(match.group(1), 16)))
    if not loops:
        return {"loop_instructions": 0, "loop_ops": {}}
    start, end = max(loops, key=lambda span: span[1] - span[0])
    ops = collections.Counter(match.group(2) for match in map(_INSTRUCTION.match, sass.splitlines())
                              if match and start <= int(match.group(1), 16) <= end)
    return {"loop_instructions": sum(ops.values()), "loop_ops": dict(ops.most_common())}


def compile_sass(kernel, *, pointer_types: dict[str, str], constexprs: dict, divisible_by_16: tuple[str, ...] = (),
                 num_warps: int = 4, num_stages: int = 1, arch: int = 90) -> dict:
    """Compile @triton.jit `kernel` for sm_<arch> (pointer arguments typed by pointer_types, e.g. "*bf16"; other
    non-constexpr arguments i32, those named in divisible_by_16 specialized as a launch with such values would be) ->
    registers, stack bytes (where spills go), local bytes, static and dynamic shared bytes, total instructions, and
    loop_mix of the SASS."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("compile_sass needs Triton's compiler: run it without TRITON_INTERPRET=1 (under the "
                           "interpreter @triton.jit returns a Python function, not a kernel)")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    params = list(inspect.signature(kernel.fn).parameters)
    unknown = set(constexprs) - set(params)
    if unknown:
        raise ValueError(f"constexprs name no parameter of {kernel.fn.__name__}: {sorted(unknown)}")
    signature = {name: pointer_types.get(name, "constexpr" if name in constexprs else "i32") for name in params}
    source = ASTSource(kernel, signature, constexprs={(params.index(n),): v for n, v in constexprs.items()},
                       attrs={(params.index(n),): [["tt.divisibility", 16]] for n in divisible_by_16})
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        sass = subprocess.run([_tool("cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True,
                              check=True).stdout
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True,
                               check=True).stdout
    resources = {key: int(value) for key, value in re.findall(r"(REG|STACK|LOCAL|SHARED):(\d+)", usage)}
    return {"registers": resources["REG"], "stack_bytes": resources["STACK"], "local_bytes": resources["LOCAL"],
            "static_shared_bytes": resources["SHARED"], "dynamic_shared_bytes": compiled.metadata.shared,
            "instructions": sum(1 for line in sass.splitlines() if _INSTRUCTION.match(line)), **loop_mix(sass)}
