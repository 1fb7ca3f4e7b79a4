"""DistinctivePruner: the budget, which tokens count as distinctive, the running mean, and its state."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest

from operators.config import PruneConfig
from operators.pruning import DistinctivePruner, distinctiveness, keep_lowest

KEY = ("t1", "cam-1")


def pruner(keep_fraction: float = 60 / 196) -> DistinctivePruner:
    return DistinctivePruner(PruneConfig(keep_fraction=keep_fraction))


def all_kept(tokens: np.ndarray) -> np.ndarray:
    return np.ones(tokens.shape[:2], dtype=bool)


@pytest.mark.parametrize(
    ("keep_fraction", "tokens", "budget"),
    [(60 / 196, 196, 60), (60 / 196, 64, 20), (0.5, 16, 8), (0.01, 16, 1), (1.0, 16, 16)],
)
def test_budget_table(keep_fraction, tokens, budget):
    assert pruner(keep_fraction).budget(tokens) == budget


def test_reference_formula_on_one_frame():
    """The vectorised score equals the method written out token by token."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 6)).astype(np.float32)
    memory = rng.standard_normal(6).astype(np.float32)
    channels = np.argsort(x.var(axis=0), kind="stable")[:3]
    xs = x[:, channels] / np.linalg.norm(x[:, channels], axis=1, keepdims=True)
    mean = xs.mean(axis=0)
    m = memory[channels] / np.linalg.norm(memory[channels])
    expected = [sum(np.exp(-np.sum((t - c) ** 2) / (2 * a)) for a in (1 / 8, 1 / 4, 1 / 2, 1, 2) for c in (mean, m))
                for t in xs]
    np.testing.assert_allclose(distinctiveness(x[None], memory[None])[0], expected, rtol=1e-5)


def test_distinctive_tokens_win_and_high_variance_channels_are_ignored():
    rng = np.random.default_rng(1)
    tokens = np.zeros((1, 16, 4), np.float32)
    tokens[0, :, 0] = 1.0  # the common content, on two quiet channels
    tokens[0, [5, 11], 0], tokens[0, [5, 11], 1] = 0.0, 1.0  # two tokens unlike the rest
    tokens[0, :, 2:] = 10 * rng.standard_normal((16, 2))  # loud noise: it would decide the score if it counted
    kept = pruner(2 / 16).prune(KEY, tokens, all_kept(tokens))
    assert np.flatnonzero(kept[0]).tolist() == [5, 11]


@pytest.mark.parametrize(("shown_before", "kept"), [("a", 12), ("b", 3)])
def test_the_running_mean_marks_what_the_stream_has_shown_before(shown_before, kept):
    """Two equally unusual tokens in a frame: the one like the stream's past content is pruned, the new one kept."""
    rng = np.random.default_rng(6)
    background, a, b = rng.standard_normal((3, 16)).astype(np.float32)
    noise = 0.01 * rng.standard_normal((6, 16, 16)).astype(np.float32)
    p = pruner(1 / 16)
    p.prune(KEY, {"a": a, "b": b}[shown_before] + noise[:5], np.ones((5, 16), bool))
    frame = np.tile(background, (1, 16, 1)) + noise[5:]
    frame[0, 3], frame[0, 12] = a, b
    assert np.flatnonzero(p.prune(KEY, frame, all_kept(frame))[0]).tolist() == [kept]


@pytest.mark.parametrize(
    ("kept_positions", "budget", "expected"),
    [
        ([0, 1, 2, 3, 4, 5], 2, [0, 5]),  # lowest scores among the kept, in original order
        ([1, 2, 3], 2, [2, 3]),  # 0 and 5 score lower but the drop removed them
        ([2, 4], 3, [2, 4]),  # fewer kept than the budget: the mask is unchanged
        ([], 3, []),  # a frame whose tokens were all dropped stays empty
    ],
)
def test_prunes_only_among_what_the_drop_kept(kept_positions, budget, expected):
    scores = np.array([[0.1, 0.5, 0.4, 0.3, 0.9, 0.2]])
    kept = np.zeros((1, 6), bool)
    kept[0, kept_positions] = True
    np.testing.assert_array_equal(np.flatnonzero(keep_lowest(scores, kept, budget)[0]), expected)


def test_every_frame_gets_at_most_the_budget_and_batching_does_not_matter():
    tokens = np.random.default_rng(2).standard_normal((6, 64, 16)).astype(np.float32)
    together = pruner().prune(KEY, tokens, all_kept(tokens))
    assert (together.sum(axis=1) == 20).all()
    split = pruner()
    parts = [split.prune(KEY, tokens[i : i + 2], all_kept(tokens[i : i + 2])) for i in (0, 2, 4)]
    np.testing.assert_array_equal(np.concatenate(parts), together)


def test_streams_snapshot_restore_and_forget():
    rng = np.random.default_rng(3)
    first, second = (rng.standard_normal((4, 16, 8)).astype(np.float32) for _ in range(2))
    running = pruner(0.25)
    running.prune(KEY, first, all_kept(first))
    running.prune(("t1", "other"), second, all_kept(second))
    restored = pruner(0.25)
    restored.restore(pickle.loads(pickle.dumps(running.snapshot())))
    np.testing.assert_array_equal(restored.prune(KEY, second, all_kept(second)),
                                  running.prune(KEY, second, all_kept(second)))
    fresh = pruner(0.25).prune(KEY, second, all_kept(second))
    restored.forget(*KEY)
    np.testing.assert_array_equal(restored.prune(KEY, second, all_kept(second)), fresh)
    with pytest.raises(ValueError, match="version"):
        restored.restore({"version": 0, "streams": []})


def test_a_new_token_width_restarts_the_running_mean(caplog):
    p = pruner(0.25)
    narrow = np.random.default_rng(4).standard_normal((2, 16, 8)).astype(np.float32)
    p.prune(KEY, narrow, all_kept(narrow))
    wide = np.random.default_rng(5).standard_normal((2, 16, 12)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="operators.pruning"):
        got = p.prune(KEY, wide, all_kept(wide))
    assert "restarted" in caplog.text
    np.testing.assert_array_equal(got, pruner(0.25).prune(KEY, wide, all_kept(wide)))


def test_empty_batch_and_mismatched_mask():
    p = pruner()
    empty = np.zeros((0, 16, 8), np.float32)
    assert p.prune(KEY, empty, all_kept(empty)).shape == (0, 16) and p.snapshot()["streams"] == []
    with pytest.raises(ValueError, match="does not match"):
        p.prune(KEY, np.zeros((2, 16, 8), np.float32), np.ones((2, 15), bool))
