"""EncodeCompressor (encode and compress on the encoder's device) against VisionEncoder.encode followed by
TokenDropCompressor.compress: the same stored tokens, masks, ratios and embeddings, on the CPU and on a GPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from operators.compress import TokenDropCompressor
from operators.device_compress import DeviceTokenCompressor
from operators.encode import VisionEncoder
from operators.encode_compress import EncodeCompressor
from operators.frames import FrameBatch, SegmentInfo
from operators.config import CompressConfig, DropConfig, EncodeConfig, PruneConfig

@pytest.fixture(scope="module")
def tower(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SigLIP vision tower (8x8 patches of 4 px, pooled head), saved like a checkpoint. Built here rather
    than from the shared tiny models so the CUDA variants run on a GPU host without their tokenizer package."""
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    root = tmp_path_factory.mktemp("siglip-tiny")
    torch.manual_seed(0)
    SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, image_size=32, patch_size=4)).save_pretrained(root)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root)
    return root


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def moving_square(n: int, height: int, width: int, seed: int) -> np.ndarray:
    """A still random background with a square that moves: some tokens change between frames, most do not."""
    rng = np.random.default_rng(seed)
    images = np.repeat(rng.integers(0, 256, (1, height, width, 3), dtype=np.uint8), n, axis=0)
    for i in range(n):
        top, left = (7 * i) % (height - 12), (11 * i) % (width - 12)
        images[i, top : top + 12, left : left + 12] = (255, 0, 0)
    return images


def batches() -> list[FrameBatch]:
    """Two streams of two segments each, of two frame sizes, interleaved as an encoder actor receives them."""
    out = []
    for seq in range(2):
        for stream, (h, w) in (("a", (48, 64)), ("b", (40, 40))):
            images = moving_square(6, h, w, seed={"a": 1, "b": 2}[stream])[seq * 3 : seq * 3 + 3]
            info = SegmentInfo("t1", stream, seq, 1.7e9 + 3 * seq, 3.0 * seq, 3.0)
            out.append(FrameBatch(info, 3.0 * seq + np.arange(3), images, [b"jpg"] * 3))
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("mode", "prune"), [
    ("feature", None),
    ("feature", PruneConfig(keep_fraction=0.25)),
    ("pixel", PruneConfig(keep_fraction=0.25)),
])
def test_stored_results_equal_encode_then_compress(tower: Path, device, mode, prune):
    # batch_frames=4: chunks cut segments in two, so a stream's state crosses chunks mid-segment.
    config = EncodeConfig(batch_frames=4, device=device)
    encoder = VisionEncoder(config, tower)
    compress_config, drop = CompressConfig(drop_threshold=0.9), DropConfig(mode=mode)
    reference = TokenDropCompressor(compress_config, drop, prune)
    fused = EncodeCompressor(encoder, DeviceTokenCompressor(compress_config, drop, prune, device=device))
    inputs = batches()
    expected = [reference.compress(f, b.images if mode == "pixel" else None)
                for f, b in zip(encoder.encode(inputs), inputs)]
    got = fused.process(inputs)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.segment == e.segment and g.grid == e.grid and g.thumbnails == e.thumbnails
        np.testing.assert_array_equal(g.kept, e.kept)
        assert g.tokens.dtype == e.tokens.dtype and g.tokens.shape == e.tokens.shape
        np.testing.assert_allclose(g.tokens.astype(np.float32), e.tokens.astype(np.float32), atol=1e-3)
        np.testing.assert_allclose(g.embedding, e.embedding, atol=1e-5)
        np.testing.assert_allclose(g.drop_ratio, e.drop_ratio)
    kept = np.concatenate([g.kept for g in got])
    assert 0 < kept.sum() < kept.size  # the comparison covers frames with both kept and dropped tokens


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_gpu_path_equals_cpu_path(tower: Path):
    results = {}
    for device in ("cpu", "cuda"):
        encoder = VisionEncoder(EncodeConfig(batch_frames=4, device=device), tower)
        compressor = DeviceTokenCompressor(CompressConfig(drop_threshold=0.9), DropConfig(mode="pixel"),
                                           PruneConfig(keep_fraction=0.25), device=device)
        results[device] = EncodeCompressor(encoder, compressor).process(batches())
    for c, g in zip(results["cpu"], results["cuda"]):
        np.testing.assert_array_equal(c.kept, g.kept)
        np.testing.assert_allclose(c.tokens.astype(np.float32), g.tokens.astype(np.float32), atol=2e-2)


@pytest.mark.skipif(not (torch.cuda.is_available() and importlib.util.find_spec("triton")),
                    reason="no CUDA device with triton")
def test_triton_preprocessing_gives_the_torch_path_results(tower: Path):
    results = {}
    for preprocess in ("torch", "triton"):
        encoder = VisionEncoder(EncodeConfig(batch_frames=4, device="cuda", preprocess=preprocess), tower)
        compressor = DeviceTokenCompressor(CompressConfig(drop_threshold=0.9), DropConfig(mode="pixel"),
                                           PruneConfig(keep_fraction=0.25), device="cuda")
        results[preprocess] = EncodeCompressor(encoder, compressor).process(batches())
    for t, g in zip(results["torch"], results["triton"]):
        np.testing.assert_array_equal(t.kept, g.kept)
        np.testing.assert_allclose(t.tokens.astype(np.float32), g.tokens.astype(np.float32), atol=2e-2)
        np.testing.assert_allclose(t.embedding, g.embedding, atol=1e-3)




def test_an_empty_batch_yields_an_empty_result(tower: Path):
    encoder = VisionEncoder(EncodeConfig(batch_frames=4), tower)
    fused = EncodeCompressor(encoder, DeviceTokenCompressor(CompressConfig()))
    info = SegmentInfo("t1", "a", 0, 1.7e9, 0.0, 1.0)
    empty = FrameBatch(info, np.zeros(0), np.zeros((0, 32, 32, 3), np.uint8))
    out = fused.process([empty, batches()[0]])
    assert out[0].kept.shape == (0, encoder.tokens_per_frame) and out[0].tokens.shape == (0, encoder.token_dim)
    assert out[1].kept[0].all()  # the stream's first frame is kept whole


def test_a_compressor_on_another_device_is_refused(tower: Path):
    encoder = VisionEncoder(EncodeConfig(batch_frames=4), tower)
    with pytest.raises(ValueError, match="must share the device"):
        EncodeCompressor(encoder, DeviceTokenCompressor(CompressConfig(), device="meta"))


@pytest.mark.parametrize("device", DEVICES)
def test_submitting_ahead_gives_the_results_of_one_call_at_a_time(tower: Path, device):
    def fused() -> EncodeCompressor:
        encoder = VisionEncoder(EncodeConfig(batch_frames=4, device=device), tower)
        return EncodeCompressor(encoder, DeviceTokenCompressor(CompressConfig(drop_threshold=0.9), DropConfig(),
                                                               PruneConfig(keep_fraction=0.25), device=device))

    inputs = batches()
    one_at_a_time = fused()
    expected = [one_at_a_time.process(inputs[:2]), one_at_a_time.process(inputs[2:])]
    ahead = fused()
    first = ahead.submit(inputs[:2])
    second = ahead.submit(inputs[2:])  # queued before the first call's results are collected
    for got, want in zip([ahead.collect(first), ahead.collect(second)], expected):
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g.kept, w.kept)
            np.testing.assert_array_equal(g.tokens, w.tokens)


def test_read_only_frames_from_an_object_store_are_accepted(tower: Path):
    encoder = VisionEncoder(EncodeConfig(batch_frames=4), tower)
    fused = EncodeCompressor(encoder, DeviceTokenCompressor(CompressConfig(drop_threshold=0.9)))
    inputs = batches()
    for b in inputs:
        b.images.flags.writeable = False  # what Ray's shared memory hands an actor
    expected = EncodeCompressor(encoder, DeviceTokenCompressor(CompressConfig(drop_threshold=0.9))).process(
        [FrameBatch(b.segment, b.pts_s, b.images.copy(), b.thumbnails) for b in inputs])
    for got, want in zip(fused.process(inputs), expected):
        np.testing.assert_array_equal(got.kept, want.kept)


def test_an_encoder_with_the_token_cache_is_refused(tower: Path):
    from operators.config import ViTCacheConfig

    encoder = VisionEncoder(EncodeConfig(batch_frames=4), tower, token_cache=ViTCacheConfig())
    with pytest.raises(ValueError, match="without token_cache"):
        EncodeCompressor(encoder, DeviceTokenCompressor(CompressConfig()))
