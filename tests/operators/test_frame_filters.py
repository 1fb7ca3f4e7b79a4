"""The single-read frame passes: their tap tables equal torch's resize and cell pooling (on the CPU), and the
Triton kernel that applies them equals the torch passes it replaces (on a GPU)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from operators.device_compress import pixel_cells_on_device
from operators.frame_filters import SeparableFilter

TRITON_ON_CUDA = pytest.mark.skipif(not (torch.cuda.is_available() and importlib.util.find_spec("triton")),
                                    reason="no CUDA device with triton")

# (frame height, width) -> (output height, width): downscales of broadcast sizes, an upscale, the identity,
# and odd sizes whose windows differ in length from one output to the next.
SIZES = [
    ((360, 640), (224, 224)),
    ((1080, 1920), (384, 384)),
    ((100, 50), (224, 224)),
    ((224, 224), (224, 224)),
    ((97, 131), (13, 29)),
]


def frames(hw: tuple[int, int], n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, *hw, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def apply(taps: SeparableFilter, x: torch.Tensor) -> torch.Tensor:
    """The filter in torch, uint8 [N,H,W,C] -> float32 [N,h,w,C]: the sum the GPU kernel computes."""
    x = x.float()
    rows = x[:, taps.rows.start.long()[:, None] + torch.arange(taps.rows.taps)]  # [N,h,Ky,W,C]
    x = (rows * taps.rows.weights[None, :, :, None, None]).sum(dim=2)
    cols = x[:, :, taps.cols.start.long()[:, None] + torch.arange(taps.cols.taps)]  # [N,h,w,Kx,C]
    return (cols * taps.cols.weights[None, None, :, :, None]).sum(dim=3)


def interpolated(x: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x.permute(0, 3, 1, 2).float(), size=out_hw, mode="bilinear", antialias=True,
                         align_corners=False).permute(0, 2, 3, 1)


@pytest.mark.parametrize(("in_hw", "out_hw"), SIZES)
def test_resize_taps_equal_antialiased_interpolate(in_hw, out_hw):
    x = frames(in_hw)
    taps = SeparableFilter.resize(in_hw, out_hw)
    assert taps.out_hw == out_hw
    torch.testing.assert_close(apply(taps, x), interpolated(x, out_hw), atol=1e-2, rtol=0)


@pytest.mark.parametrize(("in_hw", "cells_hw"), [((360, 640), (56, 56)), ((97, 131), (13, 29)), ((56, 56), (56, 56))])
def test_cell_taps_equal_adaptive_average_pooling(in_hw, cells_hw):
    x = frames(in_hw)
    pooled = F.adaptive_avg_pool2d(x.permute(0, 3, 1, 2).float(), cells_hw).permute(0, 2, 3, 1)
    torch.testing.assert_close(apply(SeparableFilter.cell_means(in_hw, cells_hw), x), pooled, atol=1e-3, rtol=0)


@pytest.mark.parametrize(("in_hw", "out_hw"), SIZES)
def test_every_window_lies_inside_the_frame(in_hw, out_hw):
    # The kernel reads K inputs from each window's start without bounds checks.
    taps = SeparableFilter.resize(in_hw, out_hw)
    for axis, length in ((taps.rows, in_hw[0]), (taps.cols, in_hw[1])):
        assert int(axis.start.min()) >= 0 and int(axis.start.max()) + axis.taps <= length
        torch.testing.assert_close(axis.weights.sum(dim=1), torch.ones(len(axis.start)))


@TRITON_ON_CUDA
@pytest.mark.parametrize(("in_hw", "out_hw"), SIZES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_resize_normalise_equals_torch(in_hw, out_hw, dtype):
    from operators.triton_frames import FramePasses

    x = frames(in_hw, n=5).cuda()
    mean, std = torch.tensor([0.5, 0.4, 0.3], device="cuda"), torch.tensor([0.2, 0.25, 0.3], device="cuda")
    expected = (interpolated(x, out_hw).permute(0, 3, 1, 2) / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    got = FramePasses(torch.device("cuda")).resize_normalise(x, out_hw, 1 / 255, mean, std, dtype)
    assert got.dtype == dtype and got.shape == (5, 3, *out_hw)
    assert got.is_contiguous(memory_format=torch.channels_last)  # the layout the tower's patch conv runs fastest on
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), expected, atol=tolerance, rtol=tolerance)


@TRITON_ON_CUDA
@pytest.mark.parametrize(("in_hw", "grid"), [((360, 640), (14, 14)), ((97, 131), (3, 7))])
def test_triton_pixel_cells_equal_torch(in_hw, grid):
    from operators.device_compress import cell_lattice
    from operators.triton_frames import FramePasses

    x = frames(in_hw, n=4).cuda()
    got = FramePasses(torch.device("cuda")).pixel_cells(x, cell_lattice(x, grid))
    torch.testing.assert_close(got, pixel_cells_on_device(x, grid), atol=1e-3, rtol=0)


@TRITON_ON_CUDA
def test_triton_passes_refuse_frames_that_are_not_uint8_rgb():
    from operators.triton_frames import FramePasses

    with pytest.raises(ValueError, match="uint8"):
        FramePasses(torch.device("cuda")).pixel_cells(torch.zeros((1, 64, 64, 3), device="cuda"), (8, 8))
