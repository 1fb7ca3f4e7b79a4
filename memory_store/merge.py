"""Time-ordered k-means: split a run of entries into k contiguous clusters whose centroids replace them.

Flash-VStream (methods.md section 4) keeps a stream's old memory at a constant
size with k-means over old centroids plus new frames, and orders the clusters by
mean time. Here clusters are contiguous in time by construction (in the order of the entries' starts), so a
merged entry covers one interval of the stream and a search hit on it stays a
time span; the algorithm is Lloyd's restricted to contiguous splits:

1. Start from k runs of equal total weight (an entry's weight is the frames it
   already covers, so an old centroid counts as the frames it replaced).
2. Centroid step: each run's weighted mean direction.
3. Assignment step: for each pair of neighbouring runs in time order, move the
   split between them to where the total weighted cosine of the union to the
   two centroids is largest (prefix sums, linear in the union's length).
4. Repeat 2-3 until no split moves, at most ``iterations`` times (Flash-VStream: 10).

Everything is in float64 with ties broken toward the earliest split, so the same
input always gives the same clusters: a replayed or rebuilt memory merges exactly
as the first one did.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-12


def contiguous_kmeans(vectors: np.ndarray, weights: np.ndarray, k: int, iterations: int = 10) -> list[range]:
    """k (or fewer, when there are fewer entries) contiguous runs covering ``vectors`` [n, d] in order."""
    n = len(vectors)
    if n == 0:
        return []
    k = max(1, min(k, n))
    x = np.asarray(vectors, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)
    w = np.asarray(weights, dtype=np.float64)
    cuts = _equal_weight_cuts(w, k)
    for _ in range(iterations):
        moved = False
        for j in range(k - 1):
            lo, hi = cuts[j], cuts[j + 2]
            left, right = (
                centroid(x[lo : cuts[j + 1]], w[lo : cuts[j + 1]]),
                centroid(x[cuts[j + 1] : hi], w[cuts[j + 1] : hi]),
            )
            gain_left = np.cumsum(w[lo:hi] * (x[lo:hi] @ left))
            gain_right = np.cumsum((w[lo:hi] * (x[lo:hi] @ right))[::-1])[::-1]
            # Split s (lo < s < hi) puts [lo, s) left and [s, hi) right; both stay non-empty.
            scores = gain_left[:-1] + gain_right[1:]
            best = lo + 1 + int(np.argmax(np.round(scores, 12)))
            if best != cuts[j + 1]:
                cuts[j + 1] = best
                moved = True
        if not moved:
            break
    return [range(cuts[j], cuts[j + 1]) for j in range(k)]


def centroid(vectors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean direction (unit length; any unit vector for a zero mean, which normalised input avoids)."""
    mean = (np.asarray(weights, dtype=np.float64)[:, None] * np.asarray(vectors, dtype=np.float64)).sum(axis=0)
    return mean / max(float(np.linalg.norm(mean)), _EPS)


def _equal_weight_cuts(w: np.ndarray, k: int) -> list[int]:
    """k + 1 cut indices from 0 to n, each run non-empty, runs of about equal total weight."""
    n = len(w)
    total = np.cumsum(w)
    cuts = [0]
    for j in range(1, k):
        at = int(np.searchsorted(total, total[-1] * j / k, side="left")) + 1
        # Leave at least one entry for this run and for each run after it.
        cuts.append(min(max(at, cuts[-1] + 1), n - (k - j)))
    cuts.append(n)
    return cuts
