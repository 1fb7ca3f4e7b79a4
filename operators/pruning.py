"""Distinctive-token pruning to a fixed per-frame budget (STC-Pruner, methods.md section 3).

Each frame keeps at most ``round(keep_fraction * T)`` tokens: the ones least like
the rest of their frame and least like what the stream has shown so far. Scoring:

1. keep, for scoring only, the 50% of channels with the lowest variance over the
   frame's tokens, and L2-normalise each token on them;
2. s = G(x, frame mean) + G(x, M), with G(x, c) = sum over a in {1/8, 1/4, 1/2, 1, 2}
   of exp(-|x - c|^2 / 2a): a multi-bandwidth Gaussian kernel, high for tokens close
   to the centre at every scale;
3. keep the K lowest-scoring (most distinctive) tokens, in their original order,
   with all their channels.

M is the running mean of the stream's frame means. It lives in full channel space
(raw tokens) and is cut down to each frame's scoring channels and normalised when
scored: STC keeps it on each chunk's own channel subset, which mixes subsets over
time. As in STC's code, M already includes the frame being scored, so a stream's
first frame has one. Channel variance is taken per frame, not per batch, so a
frame's mask does not depend on how the stream was cut into segments.

The pruner works on a kept mask, so it composes with the differential drop: the
budget applies to what the drop kept (``TokenDropCompressor`` drops, then prunes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from operators.config import PruneConfig
from operators.state import StreamKey, replace_stream

logger = logging.getLogger(__name__)


# STC-Pruner's constants: half the channels (the low-variance half carries the frame's common
# background; distinctive tokens stand out against it) and five kernel bandwidths an octave apart.
_SCORING_CHANNEL_FRACTION = 0.5
_BANDWIDTHS = (1 / 8, 1 / 4, 1 / 2, 1.0, 2.0)
_EPS = 1e-12
_SNAPSHOT_VERSION = 1




@dataclass
class _Memory:
    mean: np.ndarray  # [D] float64 running mean of the stream's raw frame means
    frames: int


class DistinctivePruner:
    """Keeps each frame's most distinctive tokens, at most a fixed budget, among those a mask already kept."""

    def __init__(self, config: PruneConfig):
        self.config = config
        self._memory: dict[StreamKey, _Memory] = {}

    def budget(self, tokens_per_frame: int) -> int:
        return max(1, round(self.config.keep_fraction * tokens_per_frame))

    def prune(self, key: StreamKey, tokens: np.ndarray, kept: np.ndarray) -> np.ndarray:
        """Mask [N,T]: ``kept`` reduced to at most the budget per frame. Tokens [N,T,D] are a stream's next frames,
        in order; all of them (kept or not) feed the frame means and M."""
        n, t, d = tokens.shape
        if kept.shape != (n, t):
            raise ValueError(f"kept mask {kept.shape} does not match tokens {tokens.shape}")
        if not n:
            return kept.copy()
        x = np.asarray(tokens, dtype=np.float32)
        memory = self._memory.get(key)
        if memory is not None and memory.mean.shape != (d,):
            logger.warning("prune %s/%s: token width %d -> %d (model changed?); running mean restarted",
                           *key, memory.mean.shape[0], d)
            memory = None
        means = x.mean(axis=1, dtype=np.float64)  # [N, D] raw frame means
        seen = memory.frames if memory else 0
        prior = memory.mean * seen if memory else np.zeros(d)
        running = (prior + np.cumsum(means, axis=0)) / (seen + np.arange(1, n + 1))[:, None]
        self._memory[key] = _Memory(running[-1].copy(), seen + n)
        scores = distinctiveness(x, running.astype(np.float32))
        return keep_lowest(scores, kept, self.budget(t))

    def forget(self, tenant_id: str, stream_id: str) -> None:
        """Drop a stream's running mean; its next frame starts a new one."""
        self._memory.pop((tenant_id, stream_id), None)

    def snapshot(self) -> dict[str, Any]:
        """Plain, picklable state: each stream's running mean and how many frames it covers."""
        return self.snapshot_of(list(self._memory))

    def snapshot_stream(self, tenant_id: str, stream_id: str) -> dict[str, Any] | None:
        key = (tenant_id, stream_id)
        return self.snapshot_of([key]) if key in self._memory else None

    def snapshot_of(self, keys: list[StreamKey]) -> dict[str, Any]:
        """`snapshot` of the streams ``keys`` (held ones)."""
        return {
            "version": _SNAPSHOT_VERSION,
            "streams": [{"tenant_id": tenant, "stream_id": stream, "mean": self._memory[(tenant, stream)].mean.copy(),
                         "frames": self._memory[(tenant, stream)].frames} for tenant, stream in keys],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Replace all state with a snapshot's."""
        self._memory = self._parse(state)

    def restore_stream(self, tenant_id: str, stream_id: str, state: dict[str, Any]) -> None:
        replace_stream(self._memory, tenant_id, stream_id, self._parse(state))

    @staticmethod
    def _parse(state: dict[str, Any]) -> dict[StreamKey, _Memory]:
        if state.get("version") != _SNAPSHOT_VERSION:
            raise ValueError(f"pruner snapshot version {state.get('version')!r}, expected {_SNAPSHOT_VERSION}")
        return {(s["tenant_id"], s["stream_id"]): _Memory(np.asarray(s["mean"], np.float64).copy(), int(s["frames"]))
                for s in state["streams"]}


def distinctiveness(tokens: np.ndarray, memory_means: np.ndarray) -> np.ndarray:
    """STC-Pruner score [N,T] of tokens [N,T,D] given M per frame [N,D]; lower is more distinctive."""
    d = tokens.shape[-1]
    keep = max(1, int(d * _SCORING_CHANNEL_FRACTION))
    # Stable sort: equal variances (e.g. constant channels) pick the same channels on every run.
    channels = np.argsort(tokens.var(axis=1), axis=1, kind="stable")[:, :keep]  # [N, keep]
    x = _normalise(np.take_along_axis(tokens, channels[:, None, :], axis=2))  # [N, T, keep]
    frame_mean = x.mean(axis=1, keepdims=True)  # not re-normalised, as in STC
    memory = _normalise(np.take_along_axis(memory_means, channels, axis=1))[:, None, :]
    return _kernel(x, frame_mean) + _kernel(x, memory)


def keep_lowest(scores: np.ndarray, kept: np.ndarray, budget: int) -> np.ndarray:
    """Mask [N,T]: per frame, the ``budget`` lowest-scoring positions among ``kept`` (all of them when fewer)."""
    masked = np.where(kept, scores, np.inf)
    order = np.argsort(masked, axis=1, kind="stable")[:, :budget]
    out = np.zeros_like(kept)
    np.put_along_axis(out, order, True, axis=1)
    return out & kept


def _kernel(x: np.ndarray, centre: np.ndarray) -> np.ndarray:
    dist2 = ((x - centre) ** 2).sum(axis=-1)
    return sum(np.exp(-dist2 / (2 * a)) for a in _BANDWIDTHS)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _EPS)
