"""Rerank coarse hits by late interaction between the query's tokens and each frame's stored tokens.

The FAISS search compares one pooled embedding per frame. An example-image query
has more to offer: its own visual tokens, in the same space as the tokens memory
keeps for the short tier. Per candidate frame, every query token takes its best
cosine among the frame's kept tokens (MaxSim, ColBERT-style), averaged over the
query tokens; a small logo matched anywhere in the frame then counts, which a
pooled embedding dilutes.

What memory keeps is incomplete by design: differential drop removed the tokens
that repeat the previous frame, so a still frame may keep a handful. MaxSim over
a handful says little, so the token score is weighted by the frame's coverage
(kept tokens / tokens per frame) and blended with the coarse score:

    score = coarse * (1 - w * c) + maxsim * (w * c),   c = kept / T, w = ``weight``

A frame without tokens (it left the short tier) keeps its coarse score.

Text queries are not reranked this way: a dual encoder's stored tokens are vision
hidden states, not in the text tower's space, and projecting patch tokens through
the image head gives scores the model was never trained to make meaningful.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Candidate:
    """A coarse hit with the stored tokens of its frame (None when the frame has none left)."""

    hit: Any  # memory_store.hits.Hit: only .score is read, and a copy with a new score returned
    tokens: np.ndarray | None  # [K, D] kept tokens


def maxsim(query_tokens: np.ndarray, frame_tokens: np.ndarray) -> float:
    """Mean over query tokens of the best cosine among the frame's tokens. Both [*, D]."""
    if not len(query_tokens) or not len(frame_tokens):
        raise ValueError("maxsim needs at least one token on each side")
    q = _unit(query_tokens)
    d = _unit(frame_tokens)
    return float((q @ d.T).max(axis=1).mean())


class LateInteractionReranker:
    """Blend each hit's coarse score with MaxSim over its frame's kept tokens, weighted by coverage."""

    def __init__(self, *, tokens_per_frame: int, weight: float):
        if tokens_per_frame < 1:
            raise ValueError(f"tokens_per_frame must be >= 1, got {tokens_per_frame}")
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight must be in [0, 1], got {weight}")
        self.tokens_per_frame = tokens_per_frame
        self.weight = weight

    def rerank(self, query_tokens: np.ndarray, candidates: Sequence[Candidate]) -> list[Any]:
        """The hits with blended scores, best first (ties keep the coarse order)."""
        rescored = []
        for c in candidates:
            if c.tokens is None or not len(c.tokens):
                rescored.append(c.hit)
                continue
            share = self.weight * min(1.0, len(c.tokens) / self.tokens_per_frame)
            score = c.hit.score * (1 - share) + maxsim(query_tokens, c.tokens) * share
            rescored.append(replace(c.hit, score=score))
        return sorted(rescored, key=lambda h: -h.score)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
