"""Separable filters over uint8 frames: the encoder's resize and the compressor's pixel cells as tap tables.

Both device passes over a batch of frames are weighted sums along each axis: the antialiased bilinear resize
to the model's input (``F.interpolate(..., antialias=True)``) and the pixel-cell means of the pixel-mode drop
(``F.adaptive_avg_pool2d``). Written as per-axis taps (for each output index, where its window starts and
the weights in it), one GPU kernel computes either while reading the uint8 frames once
(operators/triton_frames.py), where torch first converts the whole batch to float, a copy four times the
frames' size, and then reads that. The taps are the torch functions' own weights: the resize's come from
running ``F.interpolate`` on unit vectors, so they follow torch's filter exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AxisTaps:
    """One axis: output index i reads inputs [start[i], start[i] + K) with weights[i] (zero where unused)."""

    start: torch.Tensor  # [out] int32
    weights: torch.Tensor  # [out, K] float32

    @classmethod
    def from_matrix(cls, matrix: torch.Tensor) -> AxisTaps:
        """Taps of a dense [out, in] weight matrix whose rows are non-zero on one contiguous window each. Windows
        are widened to the longest and moved inside the axis, so a kernel reads K inputs without bounds checks."""
        out_len, in_len = matrix.shape
        nonzero = matrix != 0
        first = nonzero.int().argmax(dim=1)
        last = in_len - 1 - nonzero.flip(1).int().argmax(dim=1)
        k = int((last - first + 1).max())
        start = torch.clamp(first, max=in_len - k)
        columns = start[:, None] + torch.arange(k)
        return cls(start.to(torch.int32), torch.gather(matrix, 1, columns).float().contiguous())

    @property
    def taps(self) -> int:
        return self.weights.shape[1]

    def to(self, device: torch.device) -> AxisTaps:
        return AxisTaps(self.start.to(device), self.weights.to(device))


@dataclass(frozen=True)
class SeparableFilter:
    """Output pixel (y, x) = sum over the rows' and columns' taps of row weight * column weight * input pixel."""

    rows: AxisTaps
    cols: AxisTaps

    @classmethod
    def resize(cls, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> SeparableFilter:
        """Antialiased bilinear resize, align_corners=False: the weights ``F.interpolate`` uses."""
        return cls(AxisTaps.from_matrix(_resize_matrix(in_hw[0], out_hw[0])),
                   AxisTaps.from_matrix(_resize_matrix(in_hw[1], out_hw[1])))

    @classmethod
    def cell_means(cls, in_hw: tuple[int, int], cells_hw: tuple[int, int]) -> SeparableFilter:
        """Means over ``F.adaptive_avg_pool2d``'s bins: cell i covers [floor(i*n/m), ceil((i+1)*n/m))."""
        return cls(AxisTaps.from_matrix(_mean_matrix(in_hw[0], cells_hw[0])),
                   AxisTaps.from_matrix(_mean_matrix(in_hw[1], cells_hw[1])))

    @property
    def out_hw(self) -> tuple[int, int]:
        return len(self.rows.start), len(self.cols.start)

    def to(self, device: torch.device) -> SeparableFilter:
        return SeparableFilter(self.rows.to(device), self.cols.to(device))


def _resize_matrix(in_len: int, out_len: int) -> torch.Tensor:
    """[out, in]: row i holds the weights F.interpolate gives each input for output i (unit vectors in)."""
    unit = torch.eye(in_len, dtype=torch.float64).reshape(in_len, 1, 1, in_len)
    resized = F.interpolate(unit, size=(1, out_len), mode="bilinear", antialias=True, align_corners=False)
    return resized.reshape(in_len, out_len).T.contiguous()


def _mean_matrix(in_len: int, out_len: int) -> torch.Tensor:
    matrix = torch.zeros((out_len, in_len), dtype=torch.float64)
    for i in range(out_len):
        start, stop = (i * in_len) // out_len, -(-(i + 1) * in_len // out_len)  # floor, ceil
        matrix[i, start:stop] = 1.0 / (stop - start)
    return matrix
