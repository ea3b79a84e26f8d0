"""Pack wheels for a GPU host without a package registry into carries, folders of at most --mib MiB that travel one
per command and are staged there with `gpu_session.sh OUT stage DIR`: every wheel rewritten with LZMA compression (pip
installs it as any wheel; vLLM's CUDA libraries shrink about 2x), members no llmopt path imports dropped (vLLM's Rust
front end and the CUTLASS headers its JIT kernels build from), files larger than a carry split into .part-NN pieces
that `gpu_session.sh OUT install` joins. Usage: `python -m llmopt.bench.gpu_carry OUT_DIR WHEEL_OR_DIR... [--mib 56]`
writes OUT_DIR/c1 ... OUT_DIR/cN, largest files first."""
from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

# Wheel members never imported by the paged FA3 path or the rejection sampler (vllm 0.26.0): 42 MB of Rust server,
# 60 MB of CUTLASS/DeepGEMM sources for sm_100 JIT kernels.
DROPPED_PREFIXES = ("vllm/vllm-rs", "vllm/third_party/deep_gemm/", "vllm/third_party/fmha_sm100/")
MIB = 1 << 20


def recompress(wheel: Path, out_dir: Path) -> Path:
    """wheel -> out_dir/<same name>, every kept member LZMA-compressed."""
    target = out_dir / wheel.name
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(target, "w", compression=zipfile.ZIP_LZMA) as packed:
        for info in source.infolist():
            if not info.filename.startswith(DROPPED_PREFIXES):
                packed.writestr(info.filename, source.read(info), compress_type=zipfile.ZIP_LZMA)
    return target


def split(path: Path, piece_bytes: int) -> list[Path]:
    """path -> [path.part-00, path.part-01, ...] of at most piece_bytes each (path removed), or [path] when it fits."""
    if path.stat().st_size <= piece_bytes:
        return [path]
    data, pieces = path.read_bytes(), []
    for index, start in enumerate(range(0, len(data), piece_bytes)):
        piece = path.with_name(f"{path.name}.part-{index:02d}")
        piece.write_bytes(data[start:start + piece_bytes])
        pieces.append(piece)
    path.unlink()
    return pieces


def pack(files: list[Path], out_dir: Path, limit_bytes: int) -> list[list[Path]]:
    """First-fit decreasing into out_dir/c1, c2, ...: each carry at most limit_bytes."""
    carries: list[list[Path]] = []
    sizes: list[int] = []
    for file in sorted(files, key=lambda f: f.stat().st_size, reverse=True):
        size = file.stat().st_size
        index = next((i for i, used in enumerate(sizes) if used + size <= limit_bytes), None)
        if index is None:
            carries.append([])
            sizes.append(0)
            index = len(carries) - 1
        folder = out_dir / f"c{index + 1}"
        folder.mkdir(exist_ok=True)
        carries[index].append(file.rename(folder / file.name))
        sizes[index] += size
    return carries


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for the carries c1 ... cN (emptied first)")
    parser.add_argument("wheels", type=Path, nargs="+", help="wheels, or folders searched for wheels")
    parser.add_argument("--mib", type=int, default=56, help="size of one carry (the repository travels beside it)")
    args = parser.parse_args(argv)
    wheels = sorted({w for p in args.wheels for w in ([p] if p.is_file() else p.rglob("*.whl"))})
    if not wheels:
        parser.error("no wheels found")
    staging = args.out / "parts"
    staging.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("c*/*"):
        old.unlink()
    files = [piece for wheel in wheels for piece in split(recompress(wheel, staging), (args.mib - 1) * MIB)]
    for index, carry in enumerate(pack(files, args.out, args.mib * MIB), start=1):
        size = sum(f.stat().st_size for f in carry) / MIB
        print(f"c{index}: {size:.1f} MiB: {' '.join(f.name for f in carry)}")
    staging.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
