"""One stream's state handed over and taken back (`snapshot_stream` / `restore_stream`): what a live actor does
when it evicts a quiet stream and the stream returns. Through the JSON encoding the actors store it in; the
stream continues exactly, and the other streams of the operator that takes it back keep theirs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from operators.boundaries import BoundaryDetector
from operators.compress import TokenDropCompressor
from operators.config import BoundaryConfig, CompressConfig, DropConfig, FrameSkipConfig, PruneConfig
from operators.device_compress import DeviceTokenCompressor
from operators.frame_skip import FrameSkipper, pixel_cells
from operators.frames import FeatureBatch, FrameBatch, SegmentInfo
from pipelines.ingest.snapshots import pack, unpack
from tests.operators.test_device_compress import GRID, features, stream_images, stream_tokens


def _through_redis_encoding(state: dict) -> dict:
    return unpack(pack(state))


@pytest.mark.parametrize(("mode", "prune"), [("feature", None), ("feature", PruneConfig(keep_fraction=0.25)),
                                             ("pixel", PruneConfig(keep_fraction=0.25))])
def test_the_compressor_hands_over_one_stream_and_it_continues_exactly(mode, prune):
    drop = DropConfig(mode=mode, pixel_threshold=0.03)
    tokens, images = stream_tokens(10, seed=1), stream_images(10, seed=2)

    def cells(a: int, b: int) -> np.ndarray | None:
        return pixel_cells(images[a:b], GRID) if mode == "pixel" else None

    before = TokenDropCompressor(CompressConfig(), drop, prune)
    before.compress(features(tokens[:5], 0.0), cells(0, 5))
    before.compress(features(tokens[:3], 0.0, stream="other"), cells(0, 3))
    state = _through_redis_encoding(before.snapshot_stream("t1", "cam"))
    assert [s["stream_id"] for s in state["streams"]] == ["cam"]

    after = TokenDropCompressor(CompressConfig(), drop, prune)
    after.compress(features(tokens[:3], 0.0, stream="busy"), cells(0, 3))
    after.restore_stream("t1", "cam", state)
    expected = before.compress(features(tokens[5:], 5.0), cells(5, 10))
    got = after.compress(features(tokens[5:], 5.0), cells(5, 10))
    np.testing.assert_array_equal(got.kept, expected.kept)
    np.testing.assert_array_equal(got.drop_ratio, expected.drop_ratio)
    assert got.drop_ratio[0] > 0  # compared with the last frame, not kept whole
    assert after.snapshot_stream("t1", "busy") is not None  # the taker's other stream kept its state
    assert after.snapshot_stream("t1", "never") is None
    with pytest.raises(ValueError, match="to restore stream"):
        after.restore_stream("t1", "another", state)


@pytest.mark.parametrize("prune", [None, PruneConfig(keep_fraction=0.25)])
def test_one_stream_moves_between_the_numpy_and_device_compressors(prune):
    tokens = stream_tokens(10, seed=3)
    numpy_side = TokenDropCompressor(CompressConfig(), DropConfig(), prune)
    numpy_side.compress(features(tokens[:5], 0.0))
    on_device = DeviceTokenCompressor(CompressConfig(), DropConfig(), prune)
    on_device.mark(("t1", "busy"), np.array([0.0, 0.25]), torch.from_numpy(tokens[:2]), GRID)
    on_device.restore_stream("t1", "cam", _through_redis_encoding(numpy_side.snapshot_stream("t1", "cam")))
    expected = numpy_side.compress(features(tokens[5:], 5.0))
    kept, ratio = on_device.mark(("t1", "cam"), features(tokens[5:], 5.0).pts_s, torch.from_numpy(tokens[5:]), GRID)
    np.testing.assert_array_equal(kept.numpy(), expected.kept)
    np.testing.assert_allclose(ratio.numpy(), expected.drop_ratio)
    # And back: the device's state of the stream, in the numpy operator's format.
    back = TokenDropCompressor(CompressConfig(), DropConfig(), prune)
    back.restore_stream("t1", "cam", _through_redis_encoding(on_device.snapshot_stream("t1", "cam")))
    assert back.snapshot()["streams"][0]["pts_s"] == numpy_side.snapshot_stream("t1", "cam")["streams"][0]["pts_s"]
    np.testing.assert_allclose(back.snapshot_stream("t1", "cam")["streams"][0]["tokens"],
                               numpy_side.snapshot_stream("t1", "cam")["streams"][0]["tokens"])
    assert on_device.snapshot_stream("t1", "busy") is not None


def test_the_boundary_detector_hands_over_one_stream_and_its_event_goes_on():
    from tests.operators.test_boundaries import signal_batch

    change = [0.1, 0.12, 0.09, 0.11, 0.1, 0.12, 0.1, 0.9, 0.1, 0.11]
    before = BoundaryDetector(BoundaryConfig())
    before.detect(signal_batch(change[:5]))
    after = BoundaryDetector(BoundaryConfig())
    after.detect(signal_batch(change[:3], stream="busy"))
    after.restore_stream("t1", "cam-1", _through_redis_encoding(before.snapshot_stream("t1", "cam-1")))
    expected = before.detect(signal_batch(change[5:], start_s=5.0))
    got = after.detect(signal_batch(change[5:], start_s=5.0))
    np.testing.assert_array_equal(got, expected)
    assert got.any()  # the jump is a boundary against the event's statistics, which came back with it


def test_the_frame_skipper_hands_over_one_stream():
    config = FrameSkipConfig(grid=(2, 2))
    info = SegmentInfo("t1", "cam", 0, 1.7e9, 0.0, 1.0)
    images = np.full((2, 64, 64, 3), 90, np.uint8)
    batch = FrameBatch(info, np.array([0.0, 0.5]), images)
    before = FrameSkipper(config)
    mask = before.plan(batch)
    encoded_rows = int(mask.sum())
    before.fill(batch, FeatureBatch(info, batch.pts_s[mask], np.ones((encoded_rows, 4, 8), np.float32),
                                    np.ones((encoded_rows, 8), np.float32), (2, 2)), mask)
    after = FrameSkipper(config)
    after.restore_stream("t1", "cam", _through_redis_encoding(before.snapshot_stream("t1", "cam")))
    again = FrameBatch(SegmentInfo("t1", "cam", 1, 1.7e9 + 1, 1.0, 1.0), np.array([1.0]), images[:1])
    assert not after.plan(again).any() and not before.plan(again).any()  # unchanged: skipped by both
    assert after.stats()[("t1", "cam")] == before.stats()[("t1", "cam")]
