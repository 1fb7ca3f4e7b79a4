"""Retrieval rules of the query service, table-driven on plain hits."""

from __future__ import annotations

import numpy as np
import pytest

from memory_store.service import Hit
from operators.late_interaction import Candidate, LateInteractionReranker, maxsim
from pipelines.query.engine import adaptive_cut, is_about_now, pick_occurrence


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


@pytest.mark.parametrize(
    "text, about_now",
    [
        ("what is on screen right now", True),
        ("What's live NOW?", True),
        ("what is currently showing", True),
        ("what happened at the moment of the goal", True),
        ("when did the score change", False),
        ("is it known where the storm is", False),  # "known", "nowhere": words, not substrings
        ("nowhere to be seen", False),
        ("", False),
    ],
)
def test_recency_gate_recognises_questions_about_now(text, about_now):
    assert is_about_now(text) is about_now


# ---------------------------------------------------------------------------------------------
# Late-interaction rerank over stored tokens


def unit_rows(*rows: list[float]) -> np.ndarray:
    x = np.array(rows, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize(
    "query, frame, expected",
    [
        ([[1, 0], [0, 1]], [[1, 0], [0, 1]], 1.0),      # every query token found exactly
        ([[1, 0], [0, 1]], [[1, 0]], 0.5),              # half found, the other orthogonal
        ([[1, 0]], [[0, 1], [1, 0], [-1, 0]], 1.0),     # found anywhere in the frame
        ([[1, 0]], [[-1, 0]], -1.0),
    ],
)
def test_maxsim(query, frame, expected):
    assert maxsim(unit_rows(*query), unit_rows(*frame)) == pytest.approx(expected, abs=1e-6)


def test_rerank_weights_token_evidence_by_coverage():
    query = unit_rows([1, 0], [0, 1])
    full_match, partial, no_tokens = hits((1.0, 0.50), (2.0, 0.60), (3.0, 0.55))
    reranker = LateInteractionReranker(tokens_per_frame=2, weight=0.5)
    out = reranker.rerank(query, [
        Candidate(full_match, unit_rows([1, 0], [0, 1])),  # both tokens kept, both match: 0.5*0.5 + 0.5*1.0
        Candidate(partial, unit_rows([0, -1])),  # one of two kept (share 0.25), maxsim (0 - 1) / 2: 0.325
        Candidate(no_tokens, None),  # left the short tier: coarse score as is
    ])
    assert [h.wallclock_start for h in out] == [1.0, 3.0, 2.0]
    assert out[0].score == pytest.approx(0.75)
    assert out[1].score == pytest.approx(0.55)
    assert out[2].score == pytest.approx(0.6 * 0.75 + 0.25 * -0.5)


def test_rerank_weight_zero_keeps_coarse_order():
    query = unit_rows([1, 0])
    coarse = hits((1.0, 0.9), (2.0, 0.8))
    out = LateInteractionReranker(tokens_per_frame=1, weight=0.0).rerank(
        query, [Candidate(coarse[0], unit_rows([-1, 0])), Candidate(coarse[1], unit_rows([1, 0]))])
    assert [h.score for h in out] == [0.9, 0.8]
