"""Retrieval rules of the query service, table-driven on plain hits."""

from __future__ import annotations

import pytest

from memory_store.service import Hit
from pipelines.query_service import adaptive_cut, pick_occurrence


def hits(*pairs: tuple[float, float]) -> list[Hit]:
    """(wallclock, score) pairs -> hits of one stream."""
    return [Hit(f"t/s/0/{int(w * 1000)}", "s", 0, w, w + 1, w, w + 1, score, None) for w, score in pairs]


@pytest.mark.parametrize(
    "scores, kept",
    [
        ([0.80, 0.80, 0.79, 0.80], 4),           # flat: the ranking says nothing, keep all
        ([0.95, 0.20, 0.18, 0.15, 0.10], 1),     # one clear match stands out
        ([0.9, 0.88, 0.2, 0.15, 0.1], 2),        # two clear matches
        ([0.5, 0.4], 2),                         # too few to judge
    ],
)
def test_adaptive_k_keeps_what_stands_out(scores, kept):
    out = adaptive_cut(hits(*[(i, s) for i, s in enumerate(scores)]))
    assert len(out) == kept
    assert max(h.score for h in out) == max(scores)


@pytest.mark.parametrize(
    "pairs, which, k, times",
    [
        ([(30, 0.90), (10, 0.88), (20, 0.30), (40, 0.89)], "first", 1, [10]),
        ([(30, 0.90), (10, 0.88), (20, 0.30), (40, 0.89)], "last", 1, [40]),
        ([(30, 0.90), (10, 0.88), (20, 0.30), (40, 0.89)], "first", 2, [10, 30]),
        ([(30, 0.90), (10, 0.50)], "first", 1, [30]),   # a weak early hit is not an occurrence
        ([], "first", 1, []),
    ],
)
def test_first_and_last_occurrence(pairs, which, k, times):
    assert [h.wallclock_start for h in pick_occurrence(hits(*pairs), which, k)] == times
