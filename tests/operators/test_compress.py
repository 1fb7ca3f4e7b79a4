"""TokenDropCompressor on tokens of known geometry: which positions survive, and state across batches."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from operators.compress import TokenDropCompressor
from operators.frames import FeatureBatch, SegmentInfo
from pipelines.config import CompressConfig

T, D = 16, 8  # a 4x4 grid of 8-d tokens


def features(tokens: np.ndarray, start_s: float = 0.0, stream: str = "cam-1", tenant: str = "t1") -> FeatureBatch:
    n = len(tokens)
    info = SegmentInfo(tenant, stream, int(start_s), 1_700_000_000.0 + start_s, start_s, 1.0)
    embedding = np.ones((n, 4), np.float32) / 2
    return FeatureBatch(info, start_s + np.arange(n) * 0.25, tokens.astype(np.float16), embedding, (4, 4),
                        [b"jpeg"] * n)


def random_frames(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, T, D)).astype(np.float32)


def compressor(threshold: float = 0.5) -> TokenDropCompressor:
    return TokenDropCompressor(CompressConfig(drop_threshold=threshold))


def test_first_frame_is_kept_whole_and_identical_frames_are_dropped():
    frame = random_frames(1, seed=0)
    out = compressor().compress(features(np.repeat(frame, 4, axis=0)))
    assert out.kept[0].all() and not out.kept[1:].any()
    np.testing.assert_allclose(out.drop_ratio, [0.0, 1.0, 1.0, 1.0])
    assert out.tokens.shape == (T, D)


def test_changed_region_is_kept_at_its_positions():
    frames = np.repeat(random_frames(1, seed=1), 3, axis=0)
    changed = [2, 5, 6, 9]  # a small region of the 4x4 grid
    frames[1, changed] = -frames[0, changed]  # cosine -1: changed beyond any threshold
    out = compressor().compress(features(frames))
    positions, tokens = out.frame_tokens(1)
    np.testing.assert_array_equal(positions, changed)
    np.testing.assert_array_equal(tokens, frames[1, changed].astype(np.float16))
    # Frame 2 reverts to the original: the same positions changed again, relative to frame 1.
    np.testing.assert_array_equal(out.frame_tokens(2)[0], changed)
    np.testing.assert_allclose(out.drop_ratio, [0.0, 1 - 4 / T, 1 - 4 / T])


def test_compares_with_the_previous_full_frame_not_the_last_kept_token():
    # Each frame turns every token 40 degrees further: cos 0.77 to the previous frame (dropped at 0.5),
    # while the first frame's tokens drift to 80 and 120 degrees (kept, were they the reference).
    angles = np.deg2rad([0, 40, 80, 120])
    frames = np.zeros((4, T, D), np.float32)
    frames[:, :, 0], frames[:, :, 1] = np.cos(angles)[:, None], np.sin(angles)[:, None]
    out = compressor(0.5).compress(features(frames))
    assert out.kept[0].all() and not out.kept[1:].any()


@pytest.mark.parametrize(
    ("angle_deg", "threshold", "dropped"),
    [
        (30, 0.5, True),  # cos 0.87 > 0.5
        (30, 0.9, False),
        (59, 0.5, True),  # cos 0.515
        (61, 0.5, False),  # cos 0.485
        (90, 0.5, False),  # orthogonal: a new token
        (90, -0.5, True),
        (0, 1.0, False),  # threshold 1.0 never drops, even identical tokens
        (0, 0.999, True),
        (180, -1.0, False),  # nothing is below -1: threshold -1 keeps only exact reversals
        (170, -1.0, True),
    ],
)
def test_threshold_table(angle_deg, threshold, dropped):
    angle = np.deg2rad(angle_deg)
    frames = np.zeros((2, T, D), np.float32)
    frames[0, :, 0] = 1.0
    frames[1, :, 0], frames[1, :, 1] = np.cos(angle), np.sin(angle)
    out = compressor(threshold).compress(features(frames))
    assert (~out.kept[1]).all() == dropped and out.kept[1].all() != dropped


def test_state_carries_the_last_frame_across_batches():
    c = compressor()
    frames = random_frames(2, seed=3)
    c.compress(features(frames, start_s=0.0))
    nxt = np.stack([frames[1], -frames[1]])  # starts with the previous batch's last frame, then reverses it
    out = c.compress(features(nxt, start_s=1.0))
    assert not out.kept[0].any() and out.kept[1].all()


def test_streams_and_tenants_keep_separate_state():
    c = compressor()
    frame = random_frames(1, seed=5)
    c.compress(features(frame, stream="a"))
    same_stream = c.compress(features(frame, start_s=1.0, stream="a"))
    other_stream = c.compress(features(frame, start_s=1.0, stream="b"))
    other_tenant = c.compress(features(frame, start_s=1.0, stream="a", tenant="t2"))
    assert not same_stream.kept.any()
    assert other_stream.kept.all() and other_tenant.kept.all()


def test_snapshot_and_restore_continue_identically():
    first, second = random_frames(5, seed=6), random_frames(5, seed=7)
    second[0, :8], second[0, 8:] = first[-1, :8], -first[-1, 8:]  # across the boundary: half same, half reversed
    running = compressor()
    running.compress(features(first, start_s=0.0, stream="a"))
    running.compress(features(random_frames(2, seed=8), start_s=0.0, stream="b"))
    state = pickle.loads(pickle.dumps(running.snapshot()))
    restored = compressor()
    restored.restore(state)
    for stream in ("a", "b"):
        expected = running.compress(features(second, start_s=5.0, stream=stream))
        got = restored.compress(features(second, start_s=5.0, stream=stream))
        np.testing.assert_array_equal(got.kept, expected.kept)
        np.testing.assert_array_equal(got.tokens, expected.tokens)
        if stream == "a":  # the restored reference frame was really used at the boundary
            assert not got.kept[0, :8].any() and got.kept[0, 8:].all()
    [restored_a, _], [running_a, _] = restored.snapshot()["streams"], running.snapshot()["streams"]
    np.testing.assert_array_equal(restored_a["tokens"], running_a["tokens"])


def test_restore_replaces_state_and_rejects_unknown_versions():
    c = compressor()
    c.compress(features(random_frames(1, seed=9)))
    c.restore(compressor().snapshot())
    assert c.compress(features(random_frames(1, seed=9), start_s=1.0)).kept.all()
    with pytest.raises(ValueError, match="version"):
        c.restore({"version": 99, "streams": []})


def test_forget_makes_the_next_frame_whole():
    c = compressor()
    frame = random_frames(1, seed=10)
    c.compress(features(frame))
    c.forget("t1", "cam-1")
    assert c.compress(features(frame, start_s=1.0)).kept.all()


@pytest.mark.parametrize(
    ("second_start_s", "tokens", "first_kept_whole"),
    [
        (1.0, T, False),  # continues: compared with the remembered frame
        (0.0, T, True),  # a replay of the same segment: no valid previous frame
        (0.5, T, True),  # goes back in time, into the previous batch
        (1.0, T // 2, True),  # a different token count (the model changed)
    ],
)
def test_discontinuities_keep_the_first_frame_whole(second_start_s, tokens, first_kept_whole):
    c = compressor()
    frame = random_frames(1, seed=11)
    c.compress(features(np.repeat(frame, 4, axis=0)))  # pts 0.0 .. 0.75
    out = c.compress(features(frame[:, :tokens], start_s=second_start_s))
    assert out.kept[0].all() == first_kept_whole and out.kept[0].any() == first_kept_whole


def test_output_carries_the_batch_through():
    given = features(random_frames(3, seed=12), start_s=4.0)
    out = compressor().compress(given)
    assert out.segment == given.segment and out.grid == given.grid and out.thumbnails == given.thumbnails
    np.testing.assert_array_equal(out.pts_s, given.pts_s)
    np.testing.assert_array_equal(out.embedding, given.embedding)
    assert out.tokens.dtype == np.float16  # stored as the encoder produced them


def test_empty_batch_leaves_state_alone():
    c = compressor()
    frame = random_frames(1, seed=13)
    c.compress(features(frame))
    empty = c.compress(features(np.zeros((0, T, D), np.float32), start_s=1.0))
    assert empty.kept.shape == (0, T) and empty.tokens.shape == (0, D)
    assert not c.compress(features(frame, start_s=2.0)).kept.any()
