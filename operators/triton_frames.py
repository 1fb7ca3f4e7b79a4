"""The encoder's resize and the compressor's pixel cells on a GPU, each reading the uint8 frames once (Triton).

In torch, both passes first turn the whole batch into float (512 frames of 640x360: 354 MB of uint8 become
1.4 GB of float32, written and read again) and then filter that; on an H100 the two took 7.5 ms of a 512-frame
call beside the tower's 49 (BENCHMARKS.md). Here one kernel per pass reads each frame's bytes where they lie
(uint8, channels last, as decoded), sums them with the taps of ``operators.frame_filters`` in float32, and
writes only the small output, channels last: the normalised model input in the tower's dtype, or the pixel
cells in float32. Selected by ``encode.preprocess = "triton"``; importing this module needs the
``triton`` package, which torch's CUDA wheels bring along.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl

from operators.frame_filters import SeparableFilter

_BLOCK = 256  # output pixels per program; each reads Ky x Kx x 3 bytes around it, mostly from cache


@triton.jit
def _filter_kernel(frames, out, row_start, row_weight, col_start, col_weight, scale, mean, std,
                   height, width, out_h, out_w, ROW_TAPS: tl.constexpr, COL_TAPS: tl.constexpr,
                   BLOCK: tl.constexpr):
    frame = tl.program_id(0).to(tl.int64)
    pixel = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = pixel < out_h * out_w
    y, x = pixel // out_w, pixel % out_w
    y0 = tl.load(row_start + y, mask=inside, other=0)
    x0 = tl.load(col_start + x, mask=inside, other=0)
    source = frames + frame * height * width * 3
    red = tl.zeros([BLOCK], tl.float32)
    green = tl.zeros([BLOCK], tl.float32)
    blue = tl.zeros([BLOCK], tl.float32)
    for ky in tl.static_range(ROW_TAPS):
        row_w = tl.load(row_weight + y * ROW_TAPS + ky, mask=inside, other=0.0)
        line = source + (y0 + ky).to(tl.int64) * width * 3
        for kx in tl.static_range(COL_TAPS):
            w = row_w * tl.load(col_weight + x * COL_TAPS + kx, mask=inside, other=0.0)
            at = line + (x0 + kx) * 3
            red += w * tl.load(at, mask=inside, other=0).to(tl.float32)
            green += w * tl.load(at + 1, mask=inside, other=0).to(tl.float32)
            blue += w * tl.load(at + 2, mask=inside, other=0).to(tl.float32)
    dtype = out.dtype.element_ty
    target = out + (frame * out_h * out_w + pixel) * 3  # [N,h,w,3]
    tl.store(target, ((red * scale - tl.load(mean)) / tl.load(std)).to(dtype), mask=inside)
    tl.store(target + 1, ((green * scale - tl.load(mean + 1)) / tl.load(std + 1)).to(dtype), mask=inside)
    tl.store(target + 2, ((blue * scale - tl.load(mean + 2)) / tl.load(std + 2)).to(dtype), mask=inside)


class FramePasses:
    """The two single-read passes, with their taps built once per frame size and kept on the device."""

    def __init__(self, device: torch.device):
        if device.type != "cuda":
            raise ValueError(f"Triton frame passes run on a CUDA device, not {device}")
        self._device = device
        self._filters: dict[tuple[str, tuple[int, int], tuple[int, int]], SeparableFilter] = {}
        self._identity = (torch.zeros(3, device=device), torch.ones(3, device=device))

    def resize_normalise(self, frames: torch.Tensor, out_hw: tuple[int, int], scale: float, mean: torch.Tensor,
                         std: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """uint8 [N,H,W,3] -> ((resized * scale - mean) / std) as [N,3,h,w] in ``dtype``: the tower's input.

        Stored channels last, as torch's resize of permuted uint8 frames leaves it: the tower (whose first
        operation is the patch convolution) is that much faster on it that the path fed contiguous [N,3,h,w]
        pixels ran at 64% of the bare tower instead of 91% on an H100 (SigLIP-B/16, bf16; BENCHMARKS.md)."""
        taps = self._filter(SeparableFilter.resize, frames, out_hw)
        out = torch.empty((len(frames), *out_hw, 3), dtype=dtype, device=self._device)
        self._run(frames, taps, out, scale, mean.reshape(3).float(), std.reshape(3).float())
        return out.permute(0, 3, 1, 2)

    def pixel_cells(self, frames: torch.Tensor, cells_hw: tuple[int, int]) -> torch.Tensor:
        """uint8 [N,H,W,3] -> float32 cell means [N,rows,cols,3], as ``pixel_cells_on_device``."""
        taps = self._filter(SeparableFilter.cell_means, frames, cells_hw)
        out = torch.empty((len(frames), *cells_hw, 3), dtype=torch.float32, device=self._device)
        self._run(frames, taps, out, 1.0, *self._identity)
        return out

    def _filter(self, build: Callable[[tuple[int, int], tuple[int, int]], SeparableFilter], frames: torch.Tensor,
                out_hw: tuple[int, int]) -> SeparableFilter:
        if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[3] != 3:
            raise ValueError(f"frames must be uint8 [N,H,W,3], got {frames.dtype} {tuple(frames.shape)}")
        in_hw = (frames.shape[1], frames.shape[2])
        key = (build.__name__, in_hw, out_hw)
        if key not in self._filters:
            self._filters[key] = build(in_hw, out_hw).to(self._device)
        return self._filters[key]

    def _run(self, frames: torch.Tensor, taps: SeparableFilter, out: torch.Tensor, scale: float,
             mean: torch.Tensor, std: torch.Tensor) -> None:
        if not len(frames):
            return
        frames = frames.contiguous()
        out_h, out_w = taps.out_hw
        grid = (len(frames), triton.cdiv(out_h * out_w, _BLOCK))
        _filter_kernel[grid](frames, out, taps.rows.start, taps.rows.weights, taps.cols.start, taps.cols.weights,
                             scale, mean, std, frames.shape[1], frames.shape[2], out_h, out_w,
                             ROW_TAPS=taps.rows.taps, COL_TAPS=taps.cols.taps, BLOCK=_BLOCK)
