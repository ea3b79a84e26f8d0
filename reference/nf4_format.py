"""The NF4 storage format of bitsandbytes (QLoRA, Dettmers et al. 2023), shared by the nf4 contracts and their impls:
the 16-level NormalFloat table, the signed dynamic 8-bit map (Dettmers 2015) and `NF4State`, the stored tensors of one
quantized weight with or without double quantization. Types and tables only: no quantization math lives here."""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache

import torch

NF4_OFFSET = 0.9677083  # the outermost quantile of the NF4 construction (bitsandbytes create_normal_map)
DQ_BLOCKSIZE = 256  # double quantization: blocks of 256 absmax values share one float32 scale
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)  # what bitsandbytes' quantize_4bit accepts
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@cache
def _nf4_table() -> torch.Tensor:
    # QLoRA's asymmetric NormalFloat: 8 positive quantiles of N(0, 1) at linspace(offset, 0.5, 9)[:-1], 7 negative at
    # linspace(offset, 0.5, 8)[:-1], and an exact zero; each quantile rounded to float32 (bitsandbytes evaluated them
    # with scipy's float32 loop), sorted, divided by the largest in float32. Equal, bit for bit, to the 16 constants
    # bitsandbytes 0.50.2 hard-codes (tests/test_nf4.py checks it).
    positive = torch.special.ndtri(torch.linspace(NF4_OFFSET, 0.5, 9)[:-1].double()).float()  # (8,)
    negative = -torch.special.ndtri(torch.linspace(NF4_OFFSET, 0.5, 8)[:-1].double()).float()  # (7,)
    values = torch.cat([positive, negative, torch.zeros(1)]).sort().values  # (16,) float32
    return values / values.max()


def nf4_table(device="cpu") -> torch.Tensor:
    """(16,) float32, ascending: the value of code i is nf4_table()[i]; code 7 is exactly 0, code 15 is 1."""
    return _nf4_table().to(device)


@cache
def _dynamic_table() -> torch.Tensor:
    # Signed dynamic type, 7 exponent bits, 8 bits: for decade e = 0..6, the 2**e midpoints of
    # linspace(0.1, 1, 2**e + 1) (float32) times 10**(e - 6), with both signs; then 0 and 1.
    # 256 distinct values, ascending.
    values = [0.0, 1.0]
    for e in range(7):
        bounds = torch.linspace(0.1, 1, 2**e + 1, dtype=torch.float32)
        means = (10.0 ** (e - 6)) * ((bounds[:-1] + bounds[1:]) / 2.0)  # float32
        values += means.tolist() + (-means).tolist()
    return torch.tensor(sorted(values), dtype=torch.float32)


def dynamic_table(device="cpu") -> torch.Tensor:
    """(256,) float32, ascending: bitsandbytes' create_dynamic_map(signed=True), the map of the double-quantized
    absmax."""
    return _dynamic_table().to(device)


@dataclass(frozen=True, eq=False)
class NF4State:
    """One weight stored as NF4, in bitsandbytes' layout (quantize_4bit / QuantState), flattened row-major:

    codes:         (ceil(numel / 2),) uint8: element 2i in the high nibble, 2i + 1 in the low one; an odd numel pads
                   its last low nibble with the code of 0.0 (7). bitsandbytes keeps the same bytes as (bytes, 1).
    absmax:        (blocks,) float32, max |w| of each block of `blocksize` elements (the last block may be short); with
                   double quantization (blocks,) uint8 codes into dynamic_table() of (absmax - offset) / scale.
    absmax_scales: double quantization only: (ceil(blocks / 256),) float32, max |absmax - offset| of each 256 absmax.
    absmax_offset: double quantization only: () float32, the mean of the absmax.
    shape, dtype:  the weight's shape and dtype (what dequantization returns).
    """

    codes: torch.Tensor
    absmax: torch.Tensor
    shape: tuple[int, ...]
    dtype: torch.dtype
    blocksize: int = 64
    absmax_scales: torch.Tensor | None = None
    absmax_offset: torch.Tensor | None = None

    @property
    def double_quant(self) -> bool:
        return self.absmax_scales is not None

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count

    @property
    def blocks(self) -> int:
        return -(-self.numel // self.blocksize)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by name (what a checkpoint holds besides the two shared tables)."""
        found = {"codes": self.codes, "absmax": self.absmax}
        if self.double_quant:
            found.update(absmax_scales=self.absmax_scales, absmax_offset=self.absmax_offset)
        return found

    def stored_bytes(self) -> int:
        """Bytes of the stored tensors (the code tables are constants shared by every weight and not counted)."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def to(self, device) -> NF4State:
        return replace(self, **{name: t.to(device) for name, t in self.tensors().items()})
