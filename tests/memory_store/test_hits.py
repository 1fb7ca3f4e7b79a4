"""merge_episodes: hits of one stream with the same text on consecutive frames become one episode."""

from __future__ import annotations

import pytest

from memory_store.hits import TextHit, merge_episodes
from tests.memory_store.batches import WALL0


def _hit(stream: str, text: str, t_start: float, t_end: float, score: float = 0.5) -> TextHit:
    return TextHit(f"acme/{stream}/0/{int(t_start * 1000)}", stream, 0, t_start, t_end, WALL0 + t_start,
                   WALL0 + t_end, score, None, text, [])


@pytest.mark.parametrize(
    ("hits", "spans"),
    [
        pytest.param([("a", "X", 0, 1), ("a", "X", 1, 2), ("a", "X", 2, 3)], [("a", "X", 0, 3)], id="adjacent-merge"),
        pytest.param([("a", "X", 2, 3), ("a", "X", 0, 1), ("a", "X", 1, 2)], [("a", "X", 0, 3)], id="any-order"),
        pytest.param([("a", "X", 0, 1), ("a", "X", 1.3, 2.3)], [("a", "X", 0, 2.3)], id="jitter-merges"),
        pytest.param([("a", "X", 0, 1), ("a", "X", 1, 1)], [("a", "X", 0, 1)], id="unknown-last-duration"),
        pytest.param([("a", "X", 0, 1), ("a", "X", 2, 3)], [("a", "X", 0, 1), ("a", "X", 2, 3)], id="gap-splits"),
        pytest.param([("a", "X", 0, 1), ("a", "Y", 1, 2)], [("a", "X", 0, 1), ("a", "Y", 1, 2)], id="text-splits"),
        pytest.param([("a", "X", 0, 1), ("b", "X", 1, 2)], [("a", "X", 0, 1), ("b", "X", 1, 2)], id="streams-split"),
        pytest.param([("a", "X", 0, 1), ("a", "Y", 1, 2), ("a", "X", 2, 3)],
                     [("a", "X", 0, 1), ("a", "Y", 1, 2), ("a", "X", 2, 3)], id="interrupted-splits"),
    ],
)
def test_merge_episodes(hits: list[tuple], spans: list[tuple]) -> None:
    merged = merge_episodes([_hit(*h) for h in hits])
    assert sorted((h.stream_id, h.text, h.t_start, h.t_end) for h in merged) == sorted(spans)
    assert [h.wallclock_end - h.wallclock_start for h in merged] == pytest.approx([h.t_end - h.t_start for h in merged])


def test_merged_episode_shows_its_best_frame_and_ranks_by_it() -> None:
    merged = merge_episodes([_hit("a", "X", 0, 1, 0.4), _hit("a", "X", 1, 2, 0.9), _hit("a", "X", 2, 3, 0.9),
                             _hit("a", "Y", 5, 6, 0.8)])
    assert [(h.text, h.score, h.frame_key, h.t_start, h.t_end) for h in merged] == [
        ("X", 0.9, "acme/a/0/1000", 0, 3), ("Y", 0.8, "acme/a/0/5000", 5, 6)]
