"""Online event boundaries per stream (methods.md section 6; Online GEBD / CurveStream, no public code: a stand-in).

Each frame gets a change signal, one of:

drop_ratio  1 - r_t, the fraction of tokens the differential drop kept (section 2):
            valleys of r_t are scene changes. Works in feature or pixel mode.
curvature   k_t = 1 - cos(v_t, v_(t-1)) with v_t = f_t - f_(t-1) on the L2-normalised
            pooled embeddings: the trajectory turning. A trajectory at rest (|v| ~ 0)
            does not turn, so a cut out of a still scene scores 0 at the cut itself:
            this signal marks changes of motion more than cuts.

A frame is a boundary when its signal exceeds mu + max(k * sigma, min_rise), with
mu and sigma the running mean and standard deviation (Welford) of the signal since
the current event began, once the event has at least 3 scored frames and is at
least ``min_event_s`` long. After a
boundary the statistics restart: the next event has its own normal level of change
(a moving scene changes more per frame than a still one). ``min_rise`` keeps a
near-constant signal (a still scene: sigma ~ 0) from calling any flicker a boundary.

A stream's first frame opens its first event and is not scored (its drop ratio is 0
by construction: it is kept whole). State is per (tenant_id, stream_id), with
snapshot / restore. A segment read again while it is among the stream's latest (a live source's retry)
gets the answer it got the first time and changes nothing (operators.state.RecentAnswers); any other batch
that goes back in time (a replay) restarts the stream's state, as the compressor keeps that batch's first
frame whole.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from operators.config import BoundaryConfig
from operators.frames import CompressedBatch
from operators.state import PerStreamState, RecentAnswers, StreamKey

logger = logging.getLogger(__name__)

# Below this velocity norm an embedding trajectory counts as at rest (float noise of an unchanged frame).
_REST = 1e-6
# An event's first frames only feed the statistics: the spread of one or two samples is no estimate, and
# judged against it ordinary noise (0.1, 0.5, 0.1, ...) reads as a boundary. At 1 fps an event is thus at
# least 4 s long before its end can be found; the sample broadcast's shortest scene is 6.5 s.
_MIN_SAMPLES = 3


@dataclass
class _Stream:
    last_pts: float
    event_start: float
    n: int = 0  # Welford over the current event's signal
    mean: float = 0.0
    m2: float = 0.0
    embedding: np.ndarray | None = field(default=None)  # last normalised pooled embedding (curvature)
    velocity: np.ndarray | None = field(default=None)


class BoundaryDetector(PerStreamState["_Stream"]):
    """Marks the frames where a new event begins, online, per stream."""

    SNAPSHOT_NAME = "boundary"
    SNAPSHOT_VERSION = 1

    def __init__(self, config: BoundaryConfig):
        self.config = config
        self._streams: dict[StreamKey, _Stream] = {}
        self._recent: RecentAnswers[np.ndarray] = RecentAnswers()

    def detect(self, batch: CompressedBatch) -> np.ndarray:
        """bool [N]: True where a frame of ``batch`` starts a new event. Batches of a stream come in order."""
        boundaries = np.zeros(len(batch), dtype=bool)
        if not len(batch):
            return boundaries
        answered = self._recent.get(batch.segment)
        if answered is not None and len(answered) == len(batch):
            return answered.copy()
        key = (batch.segment.tenant_id, batch.segment.stream_id)
        stream = self._streams.get(key)
        first = 0
        if stream is not None and batch.pts_s[0] <= stream.last_pts:
            logger.warning("boundaries %s/%s: pts %.3f is not after the last seen %.3f (replay or restart); "
                           "a new event begins", *key, batch.pts_s[0], stream.last_pts)
            stream = None
        if stream is None:
            stream = self._streams[key] = _Stream(float(batch.pts_s[0]), float(batch.pts_s[0]))
            first = 1  # opens the first event; not scored
        signal = self._signal(stream, batch)
        for i in range(first, len(batch)):
            boundaries[i] = self._step(stream, float(batch.pts_s[i]), float(signal[i]))
        stream.last_pts = float(batch.pts_s[-1])
        self._recent.put(batch.segment, boundaries.copy())
        return boundaries

    def mark(self, batch: CompressedBatch) -> CompressedBatch:
        """``batch`` with its ``boundaries`` detected: what the compressor hands to memory."""
        return replace(batch, boundaries=self.detect(batch))

    def _signal(self, stream: _Stream, batch: CompressedBatch) -> np.ndarray:
        """Per-frame change signal; NaN where it is not defined yet."""
        if self.config.signal == "drop_ratio":
            return 1.0 - np.asarray(batch.drop_ratio, dtype=np.float64)
        out = np.full(len(batch), np.nan)
        for i, e in enumerate(np.asarray(batch.embedding, dtype=np.float64)):
            e = e / max(np.linalg.norm(e), 1e-12)
            velocity = None if stream.embedding is None else e - stream.embedding
            if velocity is not None and stream.velocity is not None:
                out[i] = _curvature(velocity, stream.velocity)
            stream.embedding, stream.velocity = e, velocity
        return out

    def _step(self, stream: _Stream, pts: float, value: float) -> bool:
        """The K-sigma test for one frame, then the statistics' update or restart."""
        if math.isnan(value):
            return False
        std = math.sqrt(stream.m2 / (stream.n - 1)) if stream.n > 1 else 0.0
        threshold = stream.mean + max(self.config.k_sigma * std, self.config.min_rise)
        if (stream.n >= _MIN_SAMPLES and value > threshold
                and pts - stream.event_start >= self.config.min_event_s):
            stream.event_start, stream.n, stream.mean, stream.m2 = pts, 0, 0.0, 0.0
            return True
        stream.n += 1
        delta = value - stream.mean
        stream.mean += delta / stream.n
        stream.m2 += delta * (value - stream.mean)
        return False

    # Snapshots (operators.state.PerStreamState): per stream the current event's start and statistics, and the
    # trajectory tail; a restored stream's current event goes on.
    def _dump(self, s: _Stream) -> dict[str, Any]:
        return {"last_pts": s.last_pts, "event_start": s.event_start, "n": s.n, "mean": s.mean, "m2": s.m2,
                "embedding": None if s.embedding is None else s.embedding.copy(),
                "velocity": None if s.velocity is None else s.velocity.copy()}

    def _load(self, s: dict[str, Any]) -> _Stream:
        return _Stream(float(s["last_pts"]), float(s["event_start"]), int(s["n"]), float(s["mean"]), float(s["m2"]),
                       None if s["embedding"] is None else np.asarray(s["embedding"], np.float64).copy(),
                       None if s["velocity"] is None else np.asarray(s["velocity"], np.float64).copy())


def _curvature(velocity: np.ndarray, previous: np.ndarray) -> float:
    """1 - cos of the turn between two steps; 0 when either step is at rest (no direction to turn from or to)."""
    a, b = np.linalg.norm(velocity), np.linalg.norm(previous)
    if a < _REST or b < _REST:
        return 0.0
    return float(1.0 - np.dot(velocity, previous) / (a * b))


def match_boundaries(detected_s: Sequence[float], truth_s: Sequence[float],
                     tolerance_s: float) -> tuple[float, float]:
    """(precision, recall) of detected boundary times against true ones, each true boundary matched at most once,
    to the nearest unmatched detection within ``tolerance_s``. Empty sets score 1.0 (nothing to get wrong)."""
    unmatched = sorted(detected_s)
    hits = 0
    for t in sorted(truth_s):
        near = [d for d in unmatched if abs(d - t) <= tolerance_s]
        if near:
            unmatched.remove(min(near, key=lambda d: abs(d - t)))
            hits += 1
    precision = hits / len(detected_s) if len(detected_s) else 1.0
    recall = hits / len(truth_s) if len(truth_s) else 1.0
    return precision, recall
