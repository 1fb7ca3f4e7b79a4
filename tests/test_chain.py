"""The operator chain's two ways from frames to what memory stores (`encode.fused`): encode and compress in one
pass on the encoder's device, or the separate encode and compress steps. Same results on the CPU (and on a GPU
against the CPU), one snapshot format, and the config's choice between them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch

from operators.frames import CompressedBatch, FrameBatch, SegmentInfo
from pipelines.config import LivelensConfig
from pipelines.ingest.chain import FusedEncodeCompress, OperatorChain, SeparateEncodeCompress

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")


def config(tmp_path: Path, tiny_models: dict[str, Path], fused: str, device: str = "cpu") -> LivelensConfig:
    # Pixel-mode drop and pruning (the gpu profile's compression); batch_frames=4 cuts segments across chunks.
    return LivelensConfig(data_dir=tmp_path, encode=dict(model=str(tiny_models["clip"]), batch_frames=4,
                                                         fused=fused, device=device),
                          drop=dict(mode="pixel"), prune=dict(keep_fraction=0.3), ocr=dict(enabled=False),
                          boundaries=dict(min_event_s=0.0, min_rise=0.05, k_sigma=1.0))


def segments(seqs: range) -> list[FrameBatch]:
    """Two streams, 3 frames a segment, interleaved as an encoder receives them: a still background with a
    square that moves (some tokens change), and a cut at segment 2 of stream a (a boundary)."""
    out = []
    for seq in seqs:
        for stream, seed in (("a", 1), ("b", 2)):
            rng = np.random.default_rng(seed + (10 if stream == "a" and seq >= 2 else 0))
            background = rng.integers(0, 256, (1, 72, 96, 3), dtype=np.uint8)
            images = np.repeat(background, 3, axis=0)
            for i in range(3):
                at = 3 * seq + i
                images[i, (5 * at) % 50 : (5 * at) % 50 + 20, (9 * at) % 70 : (9 * at) % 70 + 20] = (250, 10, 10)
            info = SegmentInfo("t1", stream, seq, 1.7e9 + 3 * seq, 3.0 * seq, 3.0)
            out.append(FrameBatch(info, 3.0 * seq + np.arange(3), images, [b"jpg"] * 3))
    return out


def assert_same(got: list, want: list, tokens_atol: float = 1e-3) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert isinstance(g, CompressedBatch) and isinstance(w, CompressedBatch)
        assert g.segment == w.segment and g.grid == w.grid
        np.testing.assert_array_equal(g.kept, w.kept)
        np.testing.assert_allclose(g.tokens.astype(np.float32), w.tokens.astype(np.float32), atol=tokens_atol)
        np.testing.assert_allclose(g.embedding, w.embedding, atol=tokens_atol)
        np.testing.assert_allclose(g.drop_ratio, w.drop_ratio)
        np.testing.assert_array_equal(g.boundaries, w.boundaries)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_fused_results_equal_the_separate_steps(tmp_path, tiny_models, device):
    separate = OperatorChain.build(config(tmp_path, tiny_models, "off"))
    fused = OperatorChain.build(config(tmp_path, tiny_models, "on", device))
    assert isinstance(separate.visual, SeparateEncodeCompress) and isinstance(fused.visual, FusedEncodeCompress)
    want = [out for seqs in (range(2), range(2, 4)) for out in separate.visual.process(segments(seqs))]
    got = [out for seqs in (range(2), range(2, 4)) for out in fused.visual.process(segments(seqs))]
    assert_same(got, want, tokens_atol=1e-3 if device == "cpu" else 3e-2)
    kept = np.concatenate([w.kept for w in want])
    assert 0 < kept.sum() < kept.size  # both kept and dropped tokens compared
    assert np.concatenate([w.boundaries for w in want]).any()  # and a boundary


@pytest.mark.parametrize(("first", "then"), [("on", "off"), ("off", "on")])
def test_a_snapshot_moves_between_the_two_paths(tmp_path, tiny_models, first, then):
    throughout = OperatorChain.build(config(tmp_path, tiny_models, then))
    throughout.visual.process(segments(range(2)))
    want = throughout.visual.process(segments(range(2, 4)))
    before = OperatorChain.build(config(tmp_path, tiny_models, first))
    before.visual.process(segments(range(2)))
    after = OperatorChain.build(config(tmp_path, tiny_models, then))
    after.restore(before.snapshot())
    # The same step names whichever path made the snapshot (the transcript stage's own state rides beside them).
    assert set(before.snapshot()) == set(after.snapshot()) >= {"compressor", "boundaries"}
    assert_same(after.visual.process(segments(range(2, 4))), want)


def test_forget_starts_a_stream_afresh_in_the_fused_path(tmp_path, tiny_models):
    chain = OperatorChain.build(config(tmp_path, tiny_models, "on"))
    chain.visual.process(segments(range(1)))
    chain.forget("t1", "a")
    again = chain.visual.process(segments(range(1, 2)))
    # a forgotten: its first frame is kept whole (nothing dropped, before pruning); b continues from its state.
    assert again[0].drop_ratio[0] == 0 and again[1].drop_ratio[0] > 0


def test_triton_preprocessing_on_the_cpu_is_refused_when_the_config_loads():
    assert LivelensConfig(profile="gpu").encode.preprocess == "triton"
    with pytest.raises(pydantic.ValidationError, match="set encode.preprocess='torch'"):
        LivelensConfig(profile="gpu", encode=dict(device="cpu"))
    assert LivelensConfig(profile="gpu", encode=dict(device="cpu", preprocess="torch")).encode.device == "cpu"


def test_the_config_chooses_the_path():
    assert not LivelensConfig().fused_encode  # auto on the CPU: the separate steps
    assert LivelensConfig(profile="gpu").fused_encode  # auto on CUDA: fused
    assert not LivelensConfig(profile="gpu", cache=dict(skip_frames=True)).fused_encode  # frame skip needs them
    assert not LivelensConfig(profile="gpu", encode=dict(fused="off")).fused_encode
    assert LivelensConfig(encode=dict(fused="on")).fused_encode
    with pytest.raises(pydantic.ValidationError, match="cache.token_cache"):
        LivelensConfig(encode=dict(fused="on"), cache=dict(token_cache=True))
