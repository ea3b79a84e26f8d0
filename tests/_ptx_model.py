"""A model of the few PTX instructions the in-house kernels' inline assembly uses, executed per thread in Python (or a
warp in lockstep, for mma.sync), so that the assembly's arithmetic, table layout, fragment layout and shared-memory
bank use are checked on a machine without a GPU. Not a simulator: straight-line code only (no branches; predicates
guard single instructions), one program's shared memory, `bar.sync` a no-op (callers run every thread's code before a
barrier ahead of any thread's code after it), mma.sync's sum rounded once (the hardware's order is unspecified)."""
from __future__ import annotations

import operator
import re
import struct
from dataclasses import dataclass, field

import numpy as np

_MASK = {"32": 0xFFFFFFFF, "64": 0xFFFFFFFFFFFFFFFF}
_BANKS, _BANK_BYTES = 32, 4
_BINARY = {"shr": operator.rshift, "shl": operator.lshift, "and": operator.and_, "add": operator.add}


def _f32(value) -> np.float32:
    return np.float32(value)


def _half_bits(value, dtype: str) -> int:
    """The 16 bits of float32 `value` rounded to nearest even in bf16 ("bf16x2") or fp16 ("f16x2")."""
    if dtype == "f16x2":
        return int(np.float32(value).astype(np.float16).view(np.uint16))
    bits = int(np.float32(value).view(np.uint32))
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF  # finite values only


def _f32_from_hex(token: str) -> np.float32:
    return np.frombuffer(struct.pack("<I", int(token.removeprefix("0f"), 16)), dtype=np.float32)[0]


@dataclass
class Program:
    """One program's shared memory (symbols declared by .shared lines placed from `shared_base`) and the global
    buffers its assembly reads (float32 arrays at fake addresses)."""

    shared_base: int = 1024  # sm_90 reserves the first KB of a program's shared window
    shared: bytearray = field(default_factory=bytearray)
    written: bytearray = field(default_factory=bytearray)  # 1 where a shared byte was stored
    symbols: dict = field(default_factory=dict)
    global_buffers: dict = field(default_factory=dict)  # address -> numpy array (float32 or uint8)

    def declare(self, name: str, size: int, align: int) -> None:
        if name in self.symbols:
            return
        start = -(-(self.shared_base + len(self.shared)) // align) * align
        self.symbols[name] = start
        grow = start + size - self.shared_base - len(self.shared)
        self.shared.extend(bytes(grow))
        self.written.extend(bytes(grow))

    def load_global(self, address: int, dtype) -> np.generic:
        """One element of the buffer holding `address`, which must be of `dtype` and aligned to it."""
        for base, values in self.global_buffers.items():
            if base <= address < base + values.nbytes:
                if values.dtype != dtype or (address - base) % values.itemsize:
                    raise ValueError(f"{np.dtype(dtype)} load at {address:#x} into a {values.dtype} buffer, or "
                                     "misaligned")
                return values[(address - base) // values.itemsize]
        raise ValueError(f"global load outside every buffer: {address:#x}")

    def load_global_raw(self, address: int, size: int) -> bytes:
        """`size` raw bytes of the buffer holding `address`, which must be aligned to `size`."""
        for base, values in self.global_buffers.items():
            if base <= address and address + size <= base + values.nbytes:
                if address % size:
                    raise ValueError(f"{size}-byte load at {address:#x} misaligned")
                return values.tobytes()[address - base:address - base + size]
        raise ValueError(f"global load of {size} bytes outside every buffer: {address:#x}")

    def load_global_words(self, address: int, count: int) -> list[int]:
        """`count` little-endian 32-bit words at `address` (a vector load, aligned to 4·count)."""
        return [int(word) for word in np.frombuffer(self.load_global_raw(address, 4 * count), dtype="<u4")]

    def _offset(self, address: int, size: int) -> int:
        offset = address - self.shared_base
        if address % size or not 0 <= offset <= len(self.shared) - size:
            raise ValueError(f"shared access of {size} bytes at {address:#x} outside the declared memory or misaligned")
        return offset

    def store_shared_f32(self, address: int, values) -> None:
        offset = self._offset(address, 4 * len(values))
        self.shared[offset:offset + 4 * len(values)] = np.asarray(values, dtype=np.float32).tobytes()
        self.written[offset:offset + 4 * len(values)] = b"\x01" * (4 * len(values))

    def load_shared_f32(self, address: int, count: int) -> list[np.float32]:
        offset = self._offset(address, 4 * count)
        return list(np.frombuffer(bytes(self.shared[offset:offset + 4 * count]), dtype=np.float32))


@dataclass
class Thread:
    tid: int
    program: Program
    registers: dict = field(default_factory=dict)
    shared_loads: list = field(default_factory=list)  # (address, bytes) of each shared load, in order

    def value(self, token: str):
        token = token.strip()
        if token in self.registers:
            return self.registers[token]
        if token in self.program.symbols:
            return self.program.symbols[token]
        if token == "%tid.x":
            return self.tid
        if token == "%laneid":
            return self.tid % 32
        if token.startswith("0f"):
            return _f32_from_hex(token)
        if re.fullmatch(r"-?\d+|0x[0-9a-fA-F]+", token):
            return int(token, 0)
        raise KeyError(f"unknown operand {token!r}")

    def address(self, token: str) -> int:
        inner = token.strip()[1:-1]
        base, _, offset = inner.partition("+")
        return self.value(base) + (int(offset, 0) if offset else 0)


def _statements(asm: str) -> list[str]:
    text = asm.strip().removeprefix("{").removesuffix("}")
    return [s.strip() for s in text.split(";") if s.strip()]


def run(asm: str, thread: Thread, operands: dict[int, object]) -> dict[int, object]:
    """Execute `asm` (one inline-assembly block) on `thread` with $n bound to operands[n]; returns every $n after."""
    return run_warp(asm, [thread], [operands])[0]


def run_warp(asm: str, threads: list[Thread], operands: list[dict[int, object]]) -> list[dict[int, object]]:
    """Execute `asm` on `threads` (the lanes of one warp, in lane order, for mma.sync) in lockstep, statement by
    statement, thread i with $n bound to operands[i][n]; returns every thread's $n after."""
    for thread, bound in zip(threads, operands):
        thread.registers.update({f"${n}": value for n, value in bound.items()})
    for statement in _statements(asm):
        if statement.startswith("mma.sync"):
            _mma(statement, threads)
            continue
        for thread in threads:
            _execute(statement, thread)
    return [{n: thread.registers[f"${n}"] for n in bound} for thread, bound in zip(threads, operands)]


def _half_value(bits: int, dtype: str) -> float:
    if dtype == "f16":
        return float(np.uint16(bits).view(np.float16))
    return float(np.uint32(bits << 16).view(np.float32))


def _mma(statement: str, threads: list[Thread]) -> None:
    """mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.<same>.f32 {d0..d3}, {a0..a3}, {b0, b1}, {c0..c3} over 32
    lanes: lane = 4·group + t holds A rows group, group + 8 (registers a0, a2 and a1, a3) at k 2t, 2t + 1 (a0, a1) and
    2t + 8, 2t + 9 (a2, a3), the lower k in the low half; B k 2t, 2t + 1 (b0) and 2t + 8, 2t + 9 (b1) at column group;
    C and D rows group (c0, c1), group + 8 (c2, c3) at columns 2t, 2t + 1 (PTX ISA, m16n8k16 fragments)."""
    op, _, rest = statement.partition(" ")
    match = re.fullmatch(r"mma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.(bf16|f16)\.\1\.f32", op)
    if not match or len(threads) != 32:
        raise NotImplementedError(f"PTX model: no {op!r} over {len(threads)} threads")
    dtype = match.group(1)
    d, a, b, c = ([name.strip() for name in group.split(",")] for group in re.findall(r"\{([^}]*)\}", rest))
    A, B, C = np.zeros((16, 16)), np.zeros((16, 8)), np.zeros((16, 8))
    for lane, thread in enumerate(threads):
        group, t = lane // 4, lane % 4
        a_slots = ((group, 2 * t), (group + 8, 2 * t), (group, 2 * t + 8), (group + 8, 2 * t + 8))
        for reg, (row, k) in enumerate(a_slots):
            bits = thread.value(a[reg])
            A[row, k], A[row, k + 1] = _half_value(bits & 0xFFFF, dtype), _half_value(bits >> 16, dtype)
        for reg, k in enumerate((2 * t, 2 * t + 8)):
            bits = thread.value(b[reg])
            B[k, group], B[k + 1, group] = _half_value(bits & 0xFFFF, dtype), _half_value(bits >> 16, dtype)
        for reg, (row, column) in enumerate(((group, 2 * t), (group, 2 * t + 1), (group + 8, 2 * t),
                                             (group + 8, 2 * t + 1))):
            C[row, column] = float(thread.value(c[reg]))
    D = A @ B + C  # products exact in float64; one rounding to float32 below
    for lane, thread in enumerate(threads):
        group, t = lane // 4, lane % 4
        for reg, (row, column) in enumerate(((group, 2 * t), (group, 2 * t + 1), (group + 8, 2 * t),
                                             (group + 8, 2 * t + 1))):
            thread.registers[d[reg]] = _f32(D[row, column])


def _execute(statement: str, thread: Thread) -> None:
    """One statement on one thread."""
    guard = re.match(r"@(!?)(\w+)\s+", statement)
    if guard:
        statement = statement[guard.end():]
        if bool(thread.registers[guard.group(2)]) == (guard.group(1) == "!"):
            return
    op, _, rest = statement.partition(" ")
    args = [a.strip() for a in re.split(r",(?![^{]*})", rest)] if rest else []
    kind = op.split(".")
    if op.startswith(".reg"):
        return
    if op.startswith(".shared"):
        match = re.fullmatch(r"\.shared\s+\.align\s+(\d+)\s+\.b8\s+(\w+)\[(\d+)\]", statement)
        thread.program.declare(match.group(2), int(match.group(3)), int(match.group(1)))
        return
    if op == "bar.sync":
        return
    d = args[0] if args else None
    if kind[0] == "mov" and d.startswith("{"):  # mov.b32 {low, high}, r: a register's two 16-bit halves
        low, high = (name.strip() for name in d.strip("{} ").split(","))
        value = thread.value(args[1])
        thread.registers[low], thread.registers[high] = value & 0xFFFF, value >> 16
    elif kind[0] == "mov":
        thread.registers[d] = thread.value(args[1])
    elif op in ("shr.u32", "shl.b32", "and.b32", "add.u32", "add.u64"):
        result = _BINARY[kind[0]](thread.value(args[1]), thread.value(args[2]))
        thread.registers[d] = result & _MASK["64" if op.endswith("64") else "32"]
    elif op == "mul.wide.u32":
        thread.registers[d] = (thread.value(args[1]) * thread.value(args[2])) & _MASK["64"]
    elif op == "mad.lo.u32":
        thread.registers[d] = (thread.value(args[1]) * thread.value(args[2]) + thread.value(args[3])) & _MASK["32"]
    elif op == "bfe.u32":
        a, position, length = (thread.value(t) for t in args[1:4])
        thread.registers[d] = (a >> position) & ((1 << length) - 1)
    elif op == "setp.ne.b32":
        thread.registers[d] = thread.value(args[1]) != thread.value(args[2])
    elif op in ("ld.global.nc.f32", "ld.global.nc.u8"):
        dtype = np.float32 if op.endswith("f32") else np.uint8
        value = thread.program.load_global(thread.address(args[1]), dtype)
        thread.registers[d] = value if dtype is np.float32 else int(value)
    elif op in ("ld.global.nc.v2.b32", "ld.global.nc.v4.b32", "ld.global.nc.v2.f32", "ld.global.nc.v4.f32"):
        names = [name.strip() for name in d.strip("{} ").split(",")]
        for name, word in zip(names, thread.program.load_global_words(thread.address(args[1]), len(names))):
            thread.registers[name] = np.uint32(word).view(np.float32) if op.endswith("f32") else word
    elif op in ("ld.global.nc.u16", "ld.global.nc.u32"):  # raw little-endian bytes, aligned to their size
        raw = thread.program.load_global_raw(thread.address(args[1]), int(kind[-1][1:]) // 8)
        thread.registers[d] = int.from_bytes(raw, "little")
    elif op == "st.shared.b32":
        offset = thread.program._offset(thread.address(d), 4)
        thread.program.shared[offset:offset + 4] = struct.pack("<I", thread.value(args[1]) & _MASK["32"])
        thread.program.written[offset:offset + 4] = b"\x01" * 4
    elif op == "ld.shared.b32":
        address = thread.address(args[1])
        thread.shared_loads.append((address, 4))
        offset = thread.program._offset(address, 4)
        thread.registers[d] = struct.unpack("<I", bytes(thread.program.shared[offset:offset + 4]))[0]
    elif op == "st.shared.v2.b32":
        offset = thread.program._offset(thread.address(d), 8)
        values = [thread.value(t.strip()) & _MASK["32"] for t in args[1].strip("{} ").split(",")]
        thread.program.shared[offset:offset + 8] = struct.pack("<II", *values)
        thread.program.written[offset:offset + 8] = b"\x01" * 8
    elif op == "ld.shared.v2.b32":
        address = thread.address(args[1])
        thread.shared_loads.append((address, 8))
        offset = thread.program._offset(address, 8)
        words = struct.unpack("<II", bytes(thread.program.shared[offset:offset + 8]))
        for name, word in zip(d.strip("{} ").split(","), words):
            thread.registers[name.strip()] = word
    elif op in ("cvt.f32.bf16", "cvt.f32.f16"):  # a 16-bit register's value, exactly
        thread.registers[d] = _f32(_half_value(thread.value(args[1]), kind[2]))
    elif op == "st.shared.v2.f32":
        values = [thread.value(t) for t in args[1].strip("{} ").split(",")]
        thread.program.store_shared_f32(thread.address(d), values)
    elif op == "ld.shared.v2.f32":
        address = thread.address(args[1])
        thread.shared_loads.append((address, 8))
        for name, value in zip(d.strip("{} ").split(","), thread.program.load_shared_f32(address, 2)):
            thread.registers[name.strip()] = value
    elif op == "fma.rn.f32":
        a, b, c = (float(thread.value(t)) for t in args[1:4])
        thread.registers[d] = _f32(a * b + c)  # a·b exact in float64, the sum rounded (twice, rarely apart)
    elif op in ("mul.rn.f32", "add.rn.f32", "sub.rn.f32"):
        a, b = _f32(thread.value(args[1])), _f32(thread.value(args[2]))
        thread.registers[d] = {"mul": a * b, "add": a + b, "sub": a - b}[kind[0]]  # float32, correctly rounded
    elif op in ("cvt.rn.bf16x2.f32", "cvt.rn.f16x2.f32"):  # a to the high half, b to the low
        high, low = (_half_bits(thread.value(t), kind[2]) for t in args[1:3])
        thread.registers[d] = high << 16 | low
    else:
        raise NotImplementedError(f"PTX model: no {op!r} (in {statement!r})")


def wavefronts(addresses: list[tuple[int, int]]) -> int:
    """Shared-memory wavefronts one warp-wide load needs: lanes' (address, bytes); 8-byte loads are served a half-warp
    at a time; within one, a bank holding several distinct 4-byte words takes that many passes (equal words
    broadcast)."""
    size = addresses[0][1]
    group = 32 if size <= 4 else 16
    total = 0
    for start in range(0, len(addresses), group):
        words_per_bank: dict[int, set] = {}
        for address, nbytes in addresses[start:start + group]:
            for word in range(address // _BANK_BYTES, (address + nbytes) // _BANK_BYTES):
                words_per_bank.setdefault(word % _BANKS, set()).add(word)
        total += max(len(words) for words in words_per_bank.values())
    return total
