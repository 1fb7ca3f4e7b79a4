"""DeviceTokenCompressor against the numpy operators it mirrors: same masks, ratios and snapshots, on the CPU
and (when one is present) on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from operators.frame_skip import pixel_cells
from operators.compress import TokenDropCompressor
from operators.device_compress import DeviceTokenCompressor, StreamRows, pixel_cells_on_device
from operators.frames import FeatureBatch, SegmentInfo
from operators.config import CompressConfig, DropConfig, PruneConfig

GRID = (4, 4)
T, D = 16, 32
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def stream_tokens(n: int, seed: int) -> np.ndarray:
    """Tokens that drift: a still background with a few positions changing per frame, so masks are mixed."""
    rng = np.random.default_rng(seed)
    tokens = np.repeat(rng.standard_normal((1, T, D)), n, axis=0)
    for i in range(1, n):
        moved = rng.choice(T, size=rng.integers(1, T // 2), replace=False)
        tokens[i:, moved] = rng.standard_normal((len(moved), D))
    return (tokens + 0.05 * rng.standard_normal(tokens.shape)).astype(np.float16)


def stream_images(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = np.repeat(rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8), n, axis=0)
    for i in range(1, n):
        r, c = rng.integers(0, 4, size=2)
        images[i:, r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16] = rng.integers(0, 256, (16, 16, 3))
    return images


def features(tokens: np.ndarray, start_s: float, stream: str = "cam") -> FeatureBatch:
    info = SegmentInfo("t1", stream, int(start_s), 1.7e9 + start_s, start_s, 1.0)
    embedding = np.ones((len(tokens), 4), np.float32) / 2
    return FeatureBatch(info, start_s + np.arange(len(tokens)) * 0.25, tokens, embedding, GRID)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("mode", "threshold", "prune"),
    [
        ("feature", 0.5, None),
        ("feature", 0.9, None),
        ("feature", 0.5, PruneConfig(keep_fraction=0.25)),
        ("feature", 1.0, PruneConfig(keep_fraction=0.5)),  # nothing dropped: the budget alone decides
        ("pixel", 0.5, None),
        ("pixel", 0.5, PruneConfig(keep_fraction=0.25)),
    ],
)
def test_masks_and_ratios_equal_the_numpy_operators_across_segments(device, mode, threshold, prune):
    config, drop = CompressConfig(drop_threshold=threshold), DropConfig(mode=mode, pixel_threshold=0.03)
    reference = TokenDropCompressor(config, drop, prune)
    on_device = DeviceTokenCompressor(config, drop, prune, device=device)
    tokens, images = stream_tokens(12, seed=1), stream_images(12, seed=2)
    # Three segments of one stream, then a replay of the first (kept whole again): state carries across calls.
    for start, stop, start_s in [(0, 5, 0.0), (5, 9, 5.0), (9, 12, 9.0), (0, 5, 0.0)]:
        batch = features(tokens[start:stop], start_s)
        cells = images[start:stop] if mode == "pixel" else None
        expected = reference.compress(batch, pixel_cells(cells, GRID) if cells is not None else None)
        device_cells = pixel_cells_on_device(torch.from_numpy(cells).to(device), GRID) if cells is not None else None
        kept, ratio = on_device.mark(("t1", "cam"), batch.pts_s, torch.from_numpy(tokens[start:stop]).to(device),
                                     GRID, device_cells)
        np.testing.assert_array_equal(kept.cpu().numpy(), expected.kept)
        np.testing.assert_allclose(ratio.cpu().numpy(), expected.drop_ratio)
        assert 0 < expected.kept.sum() < expected.kept.size or threshold == 1.0


@pytest.mark.parametrize("device", DEVICES)
def test_snapshots_move_between_the_numpy_and_device_operators(device):
    config, prune = CompressConfig(), PruneConfig(keep_fraction=0.25)
    tokens = stream_tokens(10, seed=3)
    numpy_side = TokenDropCompressor(config, DropConfig(), prune)
    numpy_side.compress(features(tokens[:5], 0.0))
    on_device = DeviceTokenCompressor(config, DropConfig(), prune, device=device)
    on_device.restore(numpy_side.snapshot())
    expected = numpy_side.compress(features(tokens[5:], 5.0))
    batch = features(tokens[5:], 5.0)
    kept, _ = on_device.mark(("t1", "cam"), batch.pts_s, torch.from_numpy(tokens[5:]).to(device), GRID)
    np.testing.assert_array_equal(kept.cpu().numpy(), expected.kept)
    back = TokenDropCompressor(config, DropConfig(), prune)
    back.restore(on_device.snapshot())
    np.testing.assert_array_equal(back.snapshot()["streams"][0]["tokens"],
                                  numpy_side.snapshot()["streams"][0]["tokens"])


def test_cells_on_the_device_equal_the_host_cells():
    images = np.random.default_rng(4).integers(0, 256, (3, 90, 160, 3), dtype=np.uint8)
    np.testing.assert_allclose(pixel_cells_on_device(torch.from_numpy(images), (7, 7)).numpy(),
                               pixel_cells(images, (7, 7)), rtol=1e-5)


@pytest.mark.parametrize(("mode", "cells", "error"), [
    ("feature", True, "feature-mode"),
    ("pixel", False, "needs the batch's pixel cells"),
])
def test_wrong_inputs_for_the_mode_are_refused(mode, cells, error):
    on_device = DeviceTokenCompressor(CompressConfig(), DropConfig(mode=mode))
    tokens = torch.zeros((2, T, D))
    given = torch.zeros((2, 16, 16, 3)) if cells else None
    with pytest.raises(ValueError, match=error):
        on_device.mark(("t1", "cam"), np.array([0.0, 1.0]), tokens, GRID, given)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["feature", "pixel"])
def test_one_chunk_of_interleaved_streams_equals_segment_by_segment(device, mode):
    """A chunk holds segments of several streams, one stream twice: rows of a stream follow each other across
    the other stream's rows, as they would segment by segment."""
    config, drop, prune = CompressConfig(drop_threshold=0.9), DropConfig(mode=mode), PruneConfig(keep_fraction=0.25)
    reference = TokenDropCompressor(config, drop, prune)
    on_device = DeviceTokenCompressor(config, drop, prune, device=device)
    tokens = {"a": stream_tokens(8, seed=5), "b": stream_tokens(8, seed=6)}
    images = {"a": stream_images(8, seed=7), "b": stream_images(8, seed=8)}
    plan = [("a", 0, 3), ("b", 0, 4), ("a", 3, 6)], [("b", 4, 8), ("a", 6, 8)]
    for chunk in plan:
        expected, rows, cells, pieces = [], [], [], []
        for stream, start, stop in chunk:
            batch = features(tokens[stream][start:stop], float(start), stream)
            frames = images[stream][start:stop]
            expected.append(reference.compress(batch, pixel_cells(frames, GRID) if mode == "pixel" else None).kept)
            rows.append(tokens[stream][start:stop])
            cells.append(frames)
            pieces.append(StreamRows(("t1", stream), batch.pts_s))
        chunk_cells = None
        if mode == "pixel":
            chunk_cells = pixel_cells_on_device(torch.from_numpy(np.concatenate(cells)).to(device), GRID)
        kept, _ = on_device.mark_chunk(pieces, torch.from_numpy(np.concatenate(rows)).to(device), GRID, chunk_cells)
        np.testing.assert_array_equal(kept.cpu().numpy(), np.concatenate(expected))
