"""The differential drop and distinctive pruning in torch, on the encoder's device (methods.md sections 2-3).

Same rules as ``TokenDropCompressor`` and ``DistinctivePruner`` (operators/compress.py, operators/pruning.py);
what differs is where the work and the state live. On a GPU host the tokens are already in device memory
when the tower finishes: comparing them there and sending back only the kept ones saves the copy of every
token to the host, which is what made the encode path run at a third of its tower (BENCHMARKS.md). Each
stream's last reference (tokens or pixel cells) and the pruner's running mean stay on the device, so one
chunk's masks are computed without waiting for the previous chunk's results to reach the host.

``mark`` only enqueues device work (no host synchronisation): the caller decides when to wait, so the next
chunk's copies and forward pass can be queued first (operators/encode_compress.py). On the CPU the same
code runs on CPU tensors; its results equal the numpy operators' (tests/operators/test_device_compress.py),
and its snapshots are theirs, so a stream can move between the two.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from operators.frame_skip import CELLS_PER_PATCH
from operators.config import CompressConfig, DropConfig, PruneConfig

logger = logging.getLogger(__name__)

StreamKey = tuple[str, str]  # (tenant_id, stream_id)

# The numpy operators' constants; one definition each would need an import from both, which the
# snapshot format already ties together (versions 2 and 1 below are theirs).
_EPS = 1e-12
_SCORING_CHANNEL_FRACTION = 0.5
_BANDWIDTHS = (1 / 8, 1 / 4, 1 / 2, 1.0, 2.0)
_COMPRESSOR_SNAPSHOT_VERSION = 2
_PRUNER_SNAPSHOT_VERSION = 1
_REFERENCE_KEY = {"feature": "tokens", "pixel": "cells"}


@dataclass
class StreamRows:
    """One stream's consecutive rows of a chunk: the frames of one segment (or part of one), in stream order."""

    key: StreamKey
    pts_s: np.ndarray


class _Table:
    """Per-stream device state as rows of one tensor, so a chunk of many streams reads and writes it in one
    kernel each instead of one per stream."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device):
        self.shape = shape
        self.rows = torch.zeros((16, *shape), dtype=dtype, device=device)

    def grow_to(self, slots: int) -> None:
        if slots > len(self.rows):
            grown = torch.zeros((max(slots, 2 * len(self.rows)), *self.shape), dtype=self.rows.dtype,
                                device=self.rows.device)
            grown[: len(self.rows)] = self.rows
            self.rows = grown


class DeviceTokenCompressor:
    """``TokenDropCompressor`` (+ ``DistinctivePruner`` when ``prune`` is given) over torch tensors on ``device``.

    State: per stream a slot, the last frame's pts and the pruner's frame count on the host; the last full
    reference and the pruner's running mean in device tables, one row per slot."""

    def __init__(self, config: CompressConfig, drop: DropConfig | None = None, prune: PruneConfig | None = None,
                 *, device: str | torch.device = "cpu"):
        self.config = config
        self.drop = drop or DropConfig()
        self.prune = prune
        self.device = torch.device(device)
        self._slots: dict[StreamKey, int] = {}
        self._free: list[int] = []
        self._pts: dict[StreamKey, float] = {}  # streams with a reference row
        self._frames: dict[StreamKey, int] = {}  # streams with a running-mean row: frames it covers
        self._references: _Table | None = None  # [slots, T, D] float32 tokens, or [slots, h, w, 3] pixel cells
        self._means: _Table | None = None  # [slots, D] float64 running means of raw frame means

    def mark(self, key: StreamKey, pts_s: np.ndarray, tokens: torch.Tensor, grid: tuple[int, int],
             cells: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``mark_chunk`` for the frames of one stream."""
        return self.mark_chunk([StreamRows(key, np.asarray(pts_s, np.float64))], tokens, grid, cells)

    def mark_chunk(self, pieces: list[StreamRows], tokens: torch.Tensor, grid: tuple[int, int],
                   cells: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(kept [N,T] bool, drop_ratio [N] float64) on the device for a chunk of frames: ``pieces`` name the
        streams of consecutive rows, in order (a stream may appear more than once, its rows in stream order).

        ``tokens`` [N,T,D] on the device as stored (float16); ``cells`` [N,h,w,3] (``pixel_cells_on_device``) in
        pixel mode only. Queues device work only: nothing here waits for the device."""
        n, t, d = tokens.shape
        if sum(len(p.pts_s) for p in pieces) != n:
            raise ValueError(f"pieces cover {sum(len(p.pts_s) for p in pieces)} rows of a {n}-frame chunk")
        references = self._references_of(tokens, grid, cells)
        if not n:
            return torch.ones((0, t), dtype=torch.bool, device=self.device), torch.zeros(0, dtype=torch.float64,
                                                                                       device=self.device)
        self._references = self._fitted(self._references, tuple(references.shape[1:]), torch.float32,
                                        _REFERENCE_KEY[self.drop.mode], self._pts)
        plan = self._plan(pieces)
        table = self._references.rows
        previous = references.index_select(0, self._index(plan.previous_rows))
        if plan.from_table_rows:
            previous[self._index(plan.from_table_rows)] = table.index_select(0, self._index(plan.from_table_slots))
        kept = self._changed(references, previous, grid)
        if plan.whole_rows:
            kept[self._index(plan.whole_rows)] = True
        table[self._index(plan.last_slots)] = references.index_select(0, self._index(plan.last_rows))
        for key, pts in plan.last_pts.items():
            self._pts[key] = pts
        drop_ratio = 1.0 - kept.double().mean(dim=1)
        if self.prune is not None:
            kept = self._prune(plan, tokens, kept)
        return kept, drop_ratio

    def _references_of(self, tokens: torch.Tensor, grid: tuple[int, int], cells: torch.Tensor | None) -> torch.Tensor:
        if self.drop.mode == "feature":
            if cells is not None:
                raise ValueError("cells given to a feature-mode compressor: set DropConfig(mode='pixel') to use them")
            return tokens.float()
        rows, cols = grid
        if cells is None:
            raise ValueError("pixel mode needs the batch's pixel cells")
        if rows * cols != tokens.shape[1] or rows == 1:
            raise ValueError(f"pixel mode needs a spatial token grid; grid {grid} for {tokens.shape[1]} tokens "
                             "is not one (a VLM's tokens?): use feature mode")
        if len(cells) != len(tokens):
            raise ValueError(f"{len(cells)} cell frames for {len(tokens)} frames")
        return cells

    def _fitted(self, table: _Table | None, shape: tuple[int, ...], dtype: torch.dtype, what: str,
                streams: dict[StreamKey, Any]) -> _Table:
        """``table``, or a new empty one when the per-stream shape changed (then every stream starts afresh)."""
        if table is not None and table.shape == shape:
            return table
        if table is not None:
            logger.warning("compress: %s shape %s -> %s (model or grid changed?); %d streams start afresh",
                           what, table.shape, shape, len(streams))
            streams.clear()
        return _Table(shape, dtype, self.device)

    def _plan(self, pieces: list[StreamRows]) -> _Plan:
        """Host-side indexes of one chunk: where each row's previous frame is, which rows are kept whole, which
        rows update the tables, and each row's place in its stream's run (for the pruner's running mean)."""
        plan = _Plan()
        last_in_chunk: dict[StreamKey, tuple[int, float]] = {}
        row = 0
        for piece in pieces:
            m = len(piece.pts_s)
            if not m:
                continue
            key, first = piece.key, row
            plan.previous_rows.extend(range(first - 1, first + m - 1))
            plan.previous_rows[first] = first
            if key in last_in_chunk:
                last_row, last_pts = last_in_chunk[key]
                if self._continues(key, last_pts, piece.pts_s):
                    plan.previous_rows[first] = last_row
                else:
                    plan.whole_rows.append(first)
            elif key in self._pts and self._continues(key, self._pts[key], piece.pts_s):
                plan.from_table_rows.append(first)
                plan.from_table_slots.append(self._slot(key))
            else:
                plan.whole_rows.append(first)
            plan.stream_rows.setdefault(key, []).extend(range(first, first + m))
            last_in_chunk[key] = (first + m - 1, float(piece.pts_s[-1]))
            row += m
        for key, (last_row, pts) in last_in_chunk.items():
            plan.last_slots.append(self._slot(key))
            plan.last_rows.append(last_row)
            plan.last_pts[key] = pts
        for table in (self._references, self._means):
            if table is not None:
                table.grow_to(len(self._slots) + len(self._free))
        return plan

    def _slot(self, key: StreamKey) -> int:
        if key not in self._slots:
            self._slots[key] = self._free.pop() if self._free else len(self._slots)
        return self._slots[key]

    def _continues(self, key: StreamKey, last_pts: float, pts_s: np.ndarray) -> bool:
        if pts_s[0] <= last_pts:
            logger.warning("compress %s/%s: pts %.3f is not after the last seen %.3f (replay or restart); "
                           "first frame kept whole", *key, pts_s[0], last_pts)
            return False
        return True

    def _changed(self, references: torch.Tensor, previous: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        if self.drop.mode == "feature":
            return _cosine(references, previous) <= self.config.drop_threshold
        return _patch_change(references, previous, grid) >= self.drop.pixel_threshold

    def _prune(self, plan: _Plan, tokens: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """The pruner's running mean per stream (a cumulative sum over each stream's rows), then the budget."""
        n, t, d = tokens.shape
        x = tokens.float()
        self._means = self._fitted(self._means, (d,), torch.float64, "token width", self._frames)
        self._means.grow_to(len(self._slots) + len(self._free))
        # Rows regrouped stream by stream; per row: where its stream's group starts, the frames its stream's mean
        # covered before this chunk, and the frames it covers once this row is in.
        order, group_start, before, covered, slots, last_rows = [], [], [], [], [], []
        for key, rows in plan.stream_rows.items():
            start, frames = len(order), self._frames.get(key, 0)
            order.extend(rows)
            group_start.extend([start] * len(rows))
            before.extend([frames] * len(rows))
            covered.extend(range(frames + 1, frames + len(rows) + 1))
            slots.extend([self._slot(key)] * len(rows))
            last_rows.append(len(order) - 1)
            self._frames[key] = frames + len(rows)
        order_t = self._index(order)
        means = x.double().mean(dim=1).index_select(0, order_t)  # [N, D] raw frame means, grouped by stream
        cumulative = torch.cat([torch.zeros((1, d), dtype=torch.float64, device=self.device), means.cumsum(dim=0)])
        in_stream = cumulative[1:] - cumulative.index_select(0, self._index(group_start))
        prior = self._means.rows.index_select(0, self._index(slots)) * self._index(before)[:, None]
        running_grouped = (prior + in_stream) / self._index(covered)[:, None]
        self._means.rows[self._index([self._slots[k] for k in plan.stream_rows])] = \
            running_grouped.index_select(0, self._index(last_rows))
        running = torch.empty_like(running_grouped).index_copy_(0, order_t, running_grouped)
        scores = distinctiveness(x, running.float())
        budget = max(1, round(self.prune.keep_fraction * t))
        return keep_lowest(scores, kept, budget)

    def _index(self, values: list[int]) -> torch.Tensor:
        """A small host list on the device, without waiting for the device: pinned, then an async copy."""
        host = torch.as_tensor(np.asarray(values, np.int64))
        if self.device.type != "cuda":
            return host
        return host.pin_memory().to(self.device, non_blocking=True)

    def forget(self, tenant_id: str, stream_id: str) -> None:
        key = (tenant_id, stream_id)
        self._pts.pop(key, None)
        self._frames.pop(key, None)
        if key in self._slots:
            self._free.append(self._slots.pop(key))

    def snapshot(self) -> dict[str, Any]:
        """``TokenDropCompressor.snapshot``'s format (host arrays), so either operator restores it."""
        return self._snapshot(list(self._pts), list(self._frames))

    def snapshot_stream(self, tenant_id: str, stream_id: str) -> dict[str, Any] | None:
        """`snapshot` of one stream (``TokenDropCompressor.snapshot_stream``'s format); None when it has no state."""
        key = (tenant_id, stream_id)
        if key not in self._pts and key not in self._frames:
            return None
        return self._snapshot([key] if key in self._pts else [], [key] if key in self._frames else [])

    def _snapshot(self, referenced: list[StreamKey], averaged: list[StreamKey]) -> dict[str, Any]:
        field = _REFERENCE_KEY[self.drop.mode]
        pruner = None
        if self.prune is not None:
            pruner = {"version": _PRUNER_SNAPSHOT_VERSION,
                      "streams": [{"tenant_id": tenant, "stream_id": stream,
                                   "mean": self._means.rows[self._slots[(tenant, stream)]].cpu().numpy(),
                                   "frames": self._frames[(tenant, stream)]} for tenant, stream in averaged]}
        return {
            "version": _COMPRESSOR_SNAPSHOT_VERSION,
            "mode": self.drop.mode,
            "streams": [{"tenant_id": tenant, "stream_id": stream, "pts_s": self._pts[(tenant, stream)],
                         field: self._references.rows[self._slots[(tenant, stream)]].cpu().numpy()}
                        for tenant, stream in referenced],
            "pruner": pruner,
        }

    def restore_stream(self, tenant_id: str, stream_id: str, state: dict[str, Any]) -> None:
        """Take back `snapshot_stream`'s result (either compressor's) for this stream alone."""
        self._check(state)
        key = (tenant_id, stream_id)
        streams = state["streams"] + (state["pruner"]["streams"] if state["pruner"] is not None else [])
        if any((s["tenant_id"], s["stream_id"]) != key for s in streams):
            raise ValueError(f"a snapshot of other streams given to restore stream {key}")
        self.forget(tenant_id, stream_id)
        for s in state["streams"]:
            reference = torch.as_tensor(np.asarray(s[_REFERENCE_KEY[self.drop.mode]], np.float32))
            self._references = self._put_row(self._references, key, reference, torch.float32, "reference", self._pts)
            self._pts[key] = float(s["pts_s"])
        for s in state["pruner"]["streams"] if state["pruner"] is not None else []:
            mean = torch.as_tensor(np.asarray(s["mean"], np.float64))
            self._means = self._put_row(self._means, key, mean, torch.float64, "token width", self._frames)
            self._frames[key] = int(s["frames"])

    def _put_row(self, table: _Table | None, key: StreamKey, row: torch.Tensor, dtype: torch.dtype, what: str,
                 streams: dict[StreamKey, Any]) -> _Table:
        table = self._fitted(table, tuple(row.shape), dtype, what, streams)
        slot = self._slot(key)
        table.grow_to(len(self._slots) + len(self._free))
        table.rows[slot] = row.to(self.device, dtype)
        return table

    def _check(self, state: dict[str, Any]) -> None:
        if state.get("version") != _COMPRESSOR_SNAPSHOT_VERSION:
            raise ValueError(f"compressor snapshot version {state.get('version')!r}, "
                             f"expected {_COMPRESSOR_SNAPSHOT_VERSION}")
        if state["mode"] != self.drop.mode:
            raise ValueError(f"a {state['mode']}-mode snapshot cannot restore a {self.drop.mode}-mode compressor")
        if (state["pruner"] is None) != (self.prune is None):
            raise ValueError("snapshot and compressor disagree on pruning: restore into the same configuration")
        if state["pruner"] is not None and state["pruner"].get("version") != _PRUNER_SNAPSHOT_VERSION:
            raise ValueError(f"pruner snapshot version {state['pruner'].get('version')!r}, "
                             f"expected {_PRUNER_SNAPSHOT_VERSION}")

    def restore(self, state: dict[str, Any]) -> None:
        self._check(state)
        self._slots, self._free, self._pts, self._frames = {}, [], {}, {}
        self._references = self._means = None
        field = _REFERENCE_KEY[self.drop.mode]
        self._references = self._restored(
            [((s["tenant_id"], s["stream_id"]), np.asarray(s[field], np.float32)) for s in state["streams"]],
            torch.float32)
        self._pts = {(s["tenant_id"], s["stream_id"]): float(s["pts_s"]) for s in state["streams"]}
        if state["pruner"] is not None:
            streams = state["pruner"]["streams"]
            self._means = self._restored(
                [((s["tenant_id"], s["stream_id"]), np.asarray(s["mean"], np.float64)) for s in streams], torch.float64)
            self._frames = {(s["tenant_id"], s["stream_id"]): int(s["frames"]) for s in streams}

    def _restored(self, rows: list[tuple[StreamKey, np.ndarray]], dtype: torch.dtype) -> _Table | None:
        if not rows:
            return None
        table = _Table(rows[0][1].shape, dtype, self.device)
        slots = [self._slot(key) for key, _ in rows]
        table.grow_to(max(slots) + 1)
        table.rows[torch.as_tensor(slots)] = torch.as_tensor(np.stack([r for _, r in rows])).to(self.device, dtype)
        return table


@dataclass
class _Plan:
    previous_rows: list[int] = field(default_factory=list)  # per row: the row holding its previous frame
    from_table_rows: list[int] = field(default_factory=list)  # rows whose previous frame is a stream's table row
    from_table_slots: list[int] = field(default_factory=list)
    whole_rows: list[int] = field(default_factory=list)  # first frames kept whole
    last_rows: list[int] = field(default_factory=list)  # each stream's last row: its next reference
    last_slots: list[int] = field(default_factory=list)
    last_pts: dict[StreamKey, float] = field(default_factory=dict)
    stream_rows: dict[StreamKey, list[int]] = field(default_factory=dict)  # rows of each stream, in order


def pixel_cells_on_device(images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``operators.frame_skip.pixel_cells`` of uint8 frames [N,H,W,3] already on the device: [N, rows*4, cols*4, 3]."""
    x = images.permute(0, 3, 1, 2).float()
    return F.adaptive_avg_pool2d(x, cell_lattice(images, grid)).permute(0, 2, 3, 1).contiguous()


def cell_lattice(images: torch.Tensor, grid: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of pixel cells for a token grid; frames [N,H,W,3] smaller than that are refused."""
    rows, cols = grid[0] * CELLS_PER_PATCH, grid[1] * CELLS_PER_PATCH
    height, width = images.shape[1:3]
    if height < rows or width < cols:
        raise ValueError(f"a {height}x{width} frame is smaller than the {rows}x{cols} cell lattice of grid {grid}")
    return rows, cols


def distinctiveness(tokens: torch.Tensor, memory_means: torch.Tensor) -> torch.Tensor:
    """``operators.pruning.distinctiveness`` in torch: STC score [N,T] of float32 tokens [N,T,D], M per frame [N,D]."""
    d = tokens.shape[-1]
    keep = max(1, int(d * _SCORING_CHANNEL_FRACTION))
    variance = tokens.var(dim=1, unbiased=False)
    channels = torch.argsort(variance, dim=1, stable=True)[:, :keep]
    x = _normalise(torch.gather(tokens, 2, channels[:, None, :].expand(-1, tokens.shape[1], -1)))
    frame_mean = x.mean(dim=1, keepdim=True)
    memory = _normalise(torch.gather(memory_means, 1, channels))[:, None, :]
    return _kernel(x, frame_mean) + _kernel(x, memory)


def keep_lowest(scores: torch.Tensor, kept: torch.Tensor, budget: int) -> torch.Tensor:
    """Mask [N,T]: per frame, the ``budget`` lowest-scoring positions among ``kept``."""
    masked = torch.where(kept, scores, torch.full_like(scores, float("inf")))
    order = torch.argsort(masked, dim=1, stable=True)[:, :budget]
    out = torch.zeros_like(kept).scatter_(1, order, True)
    return out & kept


def _kernel(x: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    dist2 = ((x - centre) ** 2).sum(dim=-1)
    return sum(torch.exp(-dist2 / (2 * a)) for a in _BANDWIDTHS)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / torch.clamp(torch.linalg.vector_norm(x, dim=-1, keepdim=True), min=_EPS)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dot = (a * b).sum(dim=-1)
    norms = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
    return torch.clamp(dot / torch.clamp(norms, min=_EPS), -1.0, 1.0)


def _patch_change(cells: torch.Tensor, previous: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    diff = (cells - previous).abs()
    n = diff.shape[0]
    per_patch = diff.reshape(n, grid[0], CELLS_PER_PATCH, grid[1], CELLS_PER_PATCH, 3).mean(dim=(2, 4, 5))
    return per_patch.reshape(n, grid[0] * grid[1]) / 255.0
