"""Spend encoder compute only on what changed: skip whole frames, or recompute only changed tokens in the ViT.

Two levels, both per stream (methods.md section 1):

FrameSkipper (frame level, model-agnostic)
    A pixel-mode change test (section 2) against the stream's last ENCODED frame:
    frames where almost no patch changed are not encoded at all and reuse the
    last features. ``plan`` says which frames must be encoded, ``fill`` builds
    the full FeatureBatch, so downstream stages still see every frame.

CachedViT (token level, STC-Cacher)
    Inside the vision tower, every ``reference_every``-th frame of a stream is
    computed in full and each encoder layer keeps its K, V, attention output and
    MLP output. Other frames compute K for all tokens, compare it per position
    with the reference's K, and recompute only the least similar fraction of
    tokens; the rest take the cached attention and MLP outputs. It drives the
    model's own layer modules (layer norms, q/k/v/out projections, MLP): no
    model file is forked.

Both keep explicit per-stream state. FrameSkipper's has snapshot / restore; CachedViT's
is derived (a reference frame recomputes it) and has none.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from operators.config import FrameSkipConfig, ViTCacheConfig
from operators.frames import FeatureBatch, FrameBatch

logger = logging.getLogger(__name__)

StreamKey = tuple[str, str]  # (tenant_id, stream_id)

# Cells per token patch along each side for the pixel change test: 4x4 cells see an object that
# covers a quarter of a patch move, with 16 values per patch instead of a 16x16 (or 56x56) pixel block.
CELLS_PER_PATCH = 4
_SNAPSHOT_VERSION = 1










# ---------------------------------------------------------------------------------------------
# Pixel-mode change test (methods.md section 2), shared with operators.compress.


def pixel_cells(images: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Area means of RGB frames [N,H,W,3] on a (rows*4, cols*4) lattice: float32 [N, rows*4, cols*4, 3], 0..255.

    Cells follow the whole frame (no crop), as the encoder resizes it, so cell block (r, c) covers the
    pixels behind token (r, c); where the size does not divide, neighbouring cells share a pixel row or
    column (adaptive average pooling). Cells of cells are the same cells: a pipeline may ship these
    (~10 KB a frame) instead of the frames and every change test gives the same answer.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [N,H,W,3], got {images.shape}")
    rows, cols = grid[0] * CELLS_PER_PATCH, grid[1] * CELLS_PER_PATCH
    height, width = images.shape[1:3]
    if height < rows or width < cols:
        raise ValueError(f"a {height}x{width} frame is smaller than the {rows}x{cols} cell lattice of grid {grid}")
    # torch, not numpy: adaptive pooling is ~2.5x faster than np.add.reduceat on one core (17 vs 39 ms for
    # 16 frames at 640x360) and uses every core. Arrays from Ray's shared memory are read-only: copy those.
    owned = images if images.flags.writeable else images.copy()
    x = torch.from_numpy(owned).permute(0, 3, 1, 2).float()
    return F.adaptive_avg_pool2d(x, (rows, cols)).permute(0, 2, 3, 1).contiguous().numpy()


def patch_change(cells: np.ndarray, previous: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Mean absolute RGB difference per patch in [0, 1]: [..., rows*4, cols*4, 3] pairs -> [..., rows*cols]."""
    diff = np.abs(cells - previous)
    lead = diff.shape[:-3]
    per_patch = diff.reshape(*lead, grid[0], CELLS_PER_PATCH, grid[1], CELLS_PER_PATCH, 3).mean(axis=(-4, -2, -1))
    return per_patch.reshape(*lead, grid[0] * grid[1]) / 255.0


# ---------------------------------------------------------------------------------------------
# Frame level: skip frames that did not change.


@dataclass
class SkipStats:
    frames_seen: int
    frames_skipped: int


@dataclass
class _SkipState:
    cells: np.ndarray  # cells of the last encoded frame: the reference of the change test
    tokens: np.ndarray  # [T, D] features of the last encoded frame, reused by skipped frames
    embedding: np.ndarray  # [E]
    grid: tuple[int, int]
    skipped_run: int  # frames skipped since the last encoded one
    seen: int
    skipped: int


class FrameSkipper:
    """Per stream: encode a frame only when enough of it changed since the last encoded frame.

    Use per batch: ``mask = plan(batch)``, encode ``batch.images[mask]``, then
    ``fill(batch, encoded, mask)``. ``plan`` reads state, ``fill`` commits it, so a
    failed encode leaves the stream as it was. A stream's batches must go through
    plan and fill in stream order, one at a time (as through the compressor).
    Comparing with the last encoded frame, not the previous frame, keeps slow
    drift from hiding: it adds up until it crosses the test or ``max_skip``.
    """

    def __init__(self, config: FrameSkipConfig):
        self.config = config
        self._streams: dict[StreamKey, _SkipState] = {}

    def plan(self, batch: FrameBatch) -> np.ndarray:
        """bool [N]: True where the frame must be encoded."""
        return self.plan_all([batch])[0]

    def plan_all(self, batches: Sequence[FrameBatch]) -> list[np.ndarray]:
        """One mask per batch, for batches filled in this order: a stream's later batch is planned against the
        frames its earlier ones encode, as if each batch were planned and filled in turn. So how a stream's
        segments are grouped into encoder calls does not change what is skipped (a resumed backfill groups
        them differently from an uninterrupted one)."""
        carried: dict[StreamKey, tuple[np.ndarray | None, int]] = {}
        masks = []
        for batch in batches:
            key = _key(batch)
            if key not in carried:
                state = self._streams.get(key)
                carried[key] = (state.cells, state.skipped_run) if state else (None, 0)
            reference, run = carried[key]
            must = np.zeros(len(batch), dtype=bool)
            cells = pixel_cells(batch.images, self.config.grid) if len(batch) else None
            for i in range(len(batch)):
                if reference is None or run >= self.config.max_skip or self._changed(cells[i], reference):
                    must[i], reference, run = True, cells[i], 0
                else:
                    run += 1
            carried[key] = (reference, run)
            masks.append(must)
        return masks

    def fill(self, batch: FrameBatch, encoded: FeatureBatch | None, mask: np.ndarray) -> FeatureBatch:
        """Features for every frame of ``batch``: ``encoded`` holds the rows of the frames ``mask`` selects, in
        order (None when it selects none); skipped frames repeat the features of the last encoded frame before
        them. Commits the stream's state."""
        key = _key(batch)
        mask = np.asarray(mask, dtype=bool)
        state = self._streams.get(key)
        count = int(mask.sum())
        if mask.shape != (len(batch),):
            raise ValueError(f"mask has shape {mask.shape} for {len(batch)} frames")
        if (0 if encoded is None else len(encoded)) != count:
            raise ValueError(f"{0 if encoded is None else len(encoded)} encoded rows for {count} frames to encode")
        if state is None and len(batch) and not mask[0]:
            raise ValueError(f"stream {key}: frame 0 is skipped but no frame of the stream was ever encoded")
        if encoded is not None and state is not None and encoded.tokens.shape[1:] != state.tokens.shape:
            raise ValueError(f"stream {key}: encoded tokens {encoded.tokens.shape[1:]} do not match the cached "
                             f"{state.tokens.shape} (the model changed?): forget the stream first")
        # The table skipped frames index into: the stream's cached frame (if any), then the encoded frames.
        tokens = ([state.tokens[None]] if state else []) + ([encoded.tokens] if encoded is not None else [])
        embedding = ([state.embedding[None]] if state else []) + ([encoded.embedding] if encoded is not None else [])
        if not tokens:
            raise ValueError(f"stream {key}: an empty batch and no frame ever encoded: no feature shape to give")
        source = np.cumsum(mask) - (0 if state else 1)
        grid = encoded.grid if encoded is not None else state.grid
        out = FeatureBatch(batch.segment, batch.pts_s, np.concatenate(tokens)[source],
                           np.concatenate(embedding)[source], grid, list(batch.thumbnails))
        self._commit(key, batch, out, mask, state)
        return out

    def _commit(self, key: StreamKey, batch: FrameBatch, out: FeatureBatch, mask: np.ndarray,
                state: _SkipState | None) -> None:
        seen = (state.seen if state else 0) + len(batch)
        skipped = (state.skipped if state else 0) + int((~mask).sum())
        if mask.any():
            last = int(np.flatnonzero(mask)[-1])
            self._streams[key] = _SkipState(
                cells=pixel_cells(batch.images[last : last + 1], self.config.grid)[0], tokens=out.tokens[last].copy(),
                embedding=out.embedding[last].copy(), grid=out.grid, skipped_run=len(batch) - 1 - last,
                seen=seen, skipped=skipped)
        elif state is not None:
            state.skipped_run += len(batch)
            state.seen, state.skipped = seen, skipped

    def _changed(self, cells: np.ndarray, reference: np.ndarray) -> bool:
        changed = patch_change(cells, reference, self.config.grid) > self.config.patch_threshold
        return bool(changed.mean() >= self.config.changed_fraction)

    def stats(self) -> dict[StreamKey, SkipStats]:
        """Frames seen and skipped per stream since its state began (or was restored)."""
        return {key: SkipStats(s.seen, s.skipped) for key, s in self._streams.items()}

    def forget(self, tenant_id: str, stream_id: str) -> None:
        """Drop a stream's state; its next frame is encoded."""
        self._streams.pop((tenant_id, stream_id), None)

    def snapshot(self) -> dict[str, Any]:
        """Plain, picklable state: per stream the last encoded frame's cells and features, and the counters."""
        return {
            "version": _SNAPSHOT_VERSION,
            "streams": [
                {"tenant_id": tenant, "stream_id": stream, "cells": s.cells.copy(), "tokens": s.tokens.copy(),
                 "embedding": s.embedding.copy(), "grid": tuple(s.grid), "skipped_run": s.skipped_run,
                 "seen": s.seen, "skipped": s.skipped}
                for (tenant, stream), s in self._streams.items()
            ],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Replace all state with a snapshot's."""
        if state.get("version") != _SNAPSHOT_VERSION:
            raise ValueError(f"frame skipper snapshot version {state.get('version')!r}, expected {_SNAPSHOT_VERSION}")
        self._streams = {
            (s["tenant_id"], s["stream_id"]): _SkipState(
                np.asarray(s["cells"], np.float32).copy(), np.asarray(s["tokens"]).copy(),
                np.asarray(s["embedding"], np.float32).copy(), tuple(s["grid"]), int(s["skipped_run"]),
                int(s["seen"]), int(s["skipped"]))
            for s in state["streams"]
        }


def _key(batch: FrameBatch | FeatureBatch) -> StreamKey:
    return batch.segment.tenant_id, batch.segment.stream_id


# ---------------------------------------------------------------------------------------------
# Token level: STC-Cacher inside the vision tower.


@dataclass(frozen=True)
class _LayerParts:
    """The modules of one pre-norm encoder layer by role: x + Attn(ln1(x)), then h + MLP(ln2(h))."""

    ln1: nn.Module
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    out: nn.Linear
    ln2: nn.Module
    mlp: nn.Module
    heads: int
    head_dim: int
    scale: float


def _clip_parts(layer: nn.Module) -> _LayerParts:
    """CLIP and SigLIP: layer_norm1, self_attn.{q,k,v,out}_proj (scale head_dim^-0.5, no mask), layer_norm2, mlp."""
    a = layer.self_attn
    return _LayerParts(layer.layer_norm1, a.q_proj, a.k_proj, a.v_proj, a.out_proj, layer.layer_norm2, layer.mlp,
                       a.num_heads, a.head_dim, a.scale)


def _vit_parts(layer: nn.Module) -> _LayerParts:
    """ViT: layernorm_before, attention.{q,k,v,o}_proj (scaling head_dim^-0.5), layernorm_after, mlp; its dropouts
    are identities in eval mode."""
    a = layer.attention
    return _LayerParts(layer.layernorm_before, a.q_proj, a.k_proj, a.v_proj, a.o_proj, layer.layernorm_after,
                       layer.mlp, a.num_attention_heads, a.head_dim, a.scaling)


def _families() -> dict[type, tuple[Callable[[nn.Module], _LayerParts], int]]:
    """Layer classes whose forward is exactly the pre-norm block above, and how many prefix tokens (CLS) lead
    their sequence. An exact class match on purpose: look-alikes differ where it matters (DINOv2 scales each
    branch by a learned layer scale; Siglip2 takes a padding mask)."""
    # Imported here, not at the top: the modeling modules take ~2 s to import, and the compressor, which
    # imports this module for its pixel helpers, never needs them.
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer
    from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer
    from transformers.models.vit.modeling_vit import ViTLayer

    return {CLIPEncoderLayer: (_clip_parts, 1), SiglipEncoderLayer: (_clip_parts, 0), ViTLayer: (_vit_parts, 1)}


@dataclass
class CacheStats:
    """What one call computed. ``token_fraction``: token rows recomputed per layer over all rows (the K projection,
    computed for every token of every frame, is not counted)."""

    frames: int
    references: int  # frames computed in full: a stream's first frame and every reference_every-th
    cuts: int  # frames computed in full because they differ too much from the previous frame
    token_fraction: float
    fallback: str | None = None  # why nothing was cached (an unsupported architecture), else None
    # Per stream: (frames, token rows recomputed in units of whole frames), for per-stream reporting.
    by_stream: dict[Hashable, tuple[int, float]] = field(default_factory=dict)


@dataclass
class _Reference:
    keys: torch.Tensor  # [T, D]
    values: torch.Tensor
    attn_out: torch.Tensor  # out-projected attention output
    mlp_out: torch.Tensor

    def select(self, rows: torch.Tensor) -> _Reference:
        """Rows of batched tensors, in new memory (the batch's tensors can be freed)."""
        return _Reference(*(t.index_select(0, rows) for t in (self.keys, self.values, self.attn_out, self.mlp_out)))

    def row(self, i: int) -> _Reference:
        return _Reference(self.keys[i], self.values[i], self.attn_out[i], self.mlp_out[i])


@dataclass
class _StreamCache:
    last_keys0: torch.Tensor  # first-layer keys of the stream's last frame: the scene-cut test compares with it
    reference: list[_Reference]  # one per layer, of the stream's last reference frame
    age: int  # frames since that reference (0: the last frame was the reference)


@dataclass
class _Plan:
    """How one batch is computed, decided at the first layer.

    Inside the layers rows are kept in plan order, reference rows first, so each kind is a contiguous block
    and needs no gather; each layer still returns its output in batch order (``inverse``), for the model
    and for anything that records per-layer outputs.
    """

    order: torch.Tensor  # plan order: reference rows, then partial rows, as batch row numbers
    inverse: torch.Tensor  # batch order from plan order
    references: int  # rows computed in full: the first ``references`` in plan order
    from_batch: torch.Tensor  # per partial row: position of its reference in the reference block (0: stored one)
    from_store: torch.Tensor  # partial rows (positions in the partial block) whose reference is a stored one
    store_slots: torch.Tensor  # for those, their slot in stored_streams
    stored_streams: list[Hashable]  # streams whose stored reference some partial row uses
    last_ref_pos: dict[Hashable, int]  # per stream: position of its last reference in the reference block
    last_ref_index: torch.Tensor  # the same positions, as one index
    age: dict[Hashable, int]  # per stream: frames since its reference after this batch
    tokens: int  # tokens recomputed per partial row
    cuts: int


class _Pass:
    """One forward pass under the cache: the batch's streams, its plan, and the state it will commit."""

    def __init__(self, streams: Sequence[Hashable]):
        self.streams = list(streams)
        self.plan: _Plan | None = None
        self.next_layer = 0
        self.keys0: torch.Tensor | None = None
        self.references: list[_Reference] = []  # per layer: rows of the streams in plan.last_ref_pos, in order
        self.returned: torch.Tensor | None = None  # the last layer output handed back, in batch order
        self.in_plan_order: torch.Tensor | None = None  # the same, in plan order


class CachedViT:
    """STC-Cacher around the vision tower of a CLIP, SigLIP or ViT model (methods.md section 1).

    ``cache(pixel_values, streams)`` runs the model's own forward (by default
    ``get_image_features`` where the model has it, else ``model(pixel_values=...)``)
    with each encoder layer's forward replaced, for that call only, by the cached
    computation below. ``streams[i]`` names the stream of row i; a stream's rows
    must be in time order. Not thread-safe: one call at a time per model.

    Per layer, on a non-reference frame: LN1 and K for all T tokens; per position
    cos(K, K_ref); the ceil(fraction * T) least similar tokens (CLS always among
    them: it pools the whole frame) get Q and V, attend over all T keys (K all new;
    V new for recomputed rows, cached for the rest), out-projection, residual, LN2
    and MLP; the other rows add the reference's cached attention and MLP outputs
    to their own residual stream. With fraction 1.0 this is exactly full compute.

    The cache is derived state, so there is no snapshot: after a restart, or
    ``forget``, a stream's next frame is a reference, as a new stream's is.
    Memory: 4 x layers x T x D values per stream (SigLIP-B/16 bf16: 14.5 MB).
    """

    def __init__(self, model: nn.Module, config: ViTCacheConfig):
        self.model = model
        self.config = config
        self._streams: dict[Hashable, _StreamCache] = {}
        self._layers, self._parts, self._prefix, self.fallback = _find_layers(model)
        if self.fallback:
            logger.error("CachedViT: %s: %s; EVERY FRAME IS COMPUTED IN FULL (no token cache)",
                         type(model).__name__, self.fallback)

    @torch.inference_mode()
    def __call__(self, pixel_values: torch.Tensor, streams: Sequence[Hashable],
                 forward: Callable[[torch.Tensor], Any] | None = None) -> tuple[Any, CacheStats]:
        """(the forward's output, what was cached) for one batch of frames of one or more streams."""
        if len(streams) != len(pixel_values):
            raise ValueError(f"{len(streams)} stream keys for {len(pixel_values)} frames")
        if self.model.training:
            raise ValueError("CachedViT runs inference only: call model.eval() first")
        forward = forward or _default_forward(self.model)
        n = len(pixel_values)
        if self.fallback or not n:
            full = {s: (count, float(count)) for s, count in Counter(streams).items()}
            return forward(pixel_values), CacheStats(n, n, 0, 1.0, self.fallback, full)
        run = _Pass(streams)
        with self._patched(run):
            output = forward(pixel_values)
        if run.next_layer != len(self._layers):
            raise RuntimeError(f"the forward ran {run.next_layer} of {len(self._layers)} encoder layers")
        self._commit(run)
        plan = run.plan
        t = run.keys0.shape[1]
        recomputed = plan.references * t + (n - plan.references) * plan.tokens
        references = plan.references - plan.cuts
        full_rows = set(plan.order[: plan.references].tolist())
        by_stream: dict[Hashable, tuple[int, float]] = {}
        for i, s in enumerate(run.streams):
            frames, rows = by_stream.get(s, (0, 0.0))
            by_stream[s] = (frames + 1, rows + (1.0 if i in full_rows else plan.tokens / t))
        return output, CacheStats(n, references, plan.cuts, recomputed / (n * t), by_stream=by_stream)

    def forget(self, stream: Hashable) -> None:
        """Drop a stream's cache; its next frame is a reference."""
        self._streams.pop(stream, None)

    @contextmanager
    def _patched(self, run: _Pass) -> Iterator[None]:
        """Replace each layer's forward by the cached one for the duration of one forward pass."""
        # A layer may already carry an instance forward (another library's wrapper): put that back, not the class's.
        previous = [vars(layer).get("forward") for layer in self._layers]
        for i, layer in enumerate(self._layers):
            layer.forward = _bound_layer(self, run, i)
        try:
            yield
        finally:
            for layer, forward in zip(self._layers, previous):
                if forward is None:
                    del layer.forward
                else:
                    layer.forward = forward

    def _layer(self, run: _Pass, index: int, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if index != run.next_layer:
            raise RuntimeError(f"encoder layer {index} ran out of order (expected {run.next_layer})")
        if attention_mask is not None:
            raise RuntimeError("CachedViT: the vision tower passed an attention mask; none of the supported "
                               "towers does, and the token cache does not apply one")
        if x.shape[0] != len(run.streams):
            raise RuntimeError(f"encoder layer {index} got {x.shape[0]} rows for {len(run.streams)} frames")
        run.next_layer += 1
        parts = self._parts[index]
        if index == 0:
            normed = parts.ln1(x)
            keys = parts.k(normed)
            run.keys0 = keys
            plan = run.plan = self._plan(run, keys)
            x, normed, keys = (t.index_select(0, plan.order) for t in (x, normed, keys))
        else:
            plan = run.plan
            # The layer before returned this very tensor: its plan-order twin saves a gather.
            x = run.in_plan_order if x is run.returned else x.index_select(0, plan.order)
            normed = parts.ln1(x)
            keys = parts.k(normed)
        r = plan.references
        out = torch.empty_like(x)
        references: _Reference | None = None
        if r:
            references = _full_rows(parts, x[:r], normed[:r], keys[:r], out[:r])
        if r < len(x):
            stored = [self._streams[s].reference[index] for s in plan.stored_streams]
            _partial_rows(parts, x[r:], normed[r:], keys[r:], _gather(stored, references, plan), plan.tokens,
                          self._prefix, out[r:])
        if plan.last_ref_pos:  # one gather per tensor, not one copy per stream
            run.references.append(references.select(plan.last_ref_index))
        run.in_plan_order = out
        run.returned = out.index_select(0, plan.inverse)
        return run.returned

    def _plan(self, run: _Pass, keys0: torch.Tensor) -> _Plan:
        """Which rows are references (first frame, periodic, or scene cut) and which reference each other row uses."""
        streams = run.streams
        n, t = keys0.shape[:2]
        # The previous frame of each row: the row before it of the same stream, else the stream's stored last frame.
        previous: list[torch.Tensor | None] = []
        last_row: dict[Hashable, int] = {}
        for i, s in enumerate(streams):
            prev = last_row.get(s)
            previous.append(keys0[prev] if prev is not None else
                            self._streams[s].last_keys0 if s in self._streams else None)
            last_row[s] = i
        has_prev = torch.tensor([p is not None for p in previous], device=keys0.device)
        cut = [False] * n
        if has_prev.any():
            prev_keys = torch.stack([p for p in previous if p is not None])
            similarity = _cosine(keys0[has_prev], prev_keys).mean(dim=-1)
            for i, below in zip(has_prev.nonzero()[:, 0].tolist(), (similarity < self.config.cut_similarity).tolist()):
                cut[i] = below

        ref_rows: list[int] = []
        part_rows: list[int] = []
        part_refs: list[tuple[str, int]] = []  # per partial row: ("state", slot) or ("row", ref position)
        stored_streams: list[Hashable] = []
        current: dict[Hashable, tuple[str, int]] = {}
        age: dict[Hashable, int] = {}
        cuts = 0
        for i, s in enumerate(streams):
            if s not in current and s in self._streams:
                current[s] = ("state", len(stored_streams))
                stored_streams.append(s)
                age[s] = self._streams[s].age
            due = s not in current or age[s] + 1 >= self.config.reference_every
            if due or cut[i]:
                cuts += int(not due)
                current[s] = ("row", len(ref_rows))
                ref_rows.append(i)
                age[s] = 0
            else:
                part_rows.append(i)
                part_refs.append(current[s])
                age[s] += 1
        device = keys0.device

        def index(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long, device=device)

        from_store = [p for p, (kind, _) in enumerate(part_refs) if kind == "state"]
        last_ref_pos = {s: where for s, (kind, where) in current.items() if kind == "row"}
        order = index(ref_rows + part_rows)
        return _Plan(
            order=order,
            inverse=torch.argsort(order),
            references=len(ref_rows),
            from_batch=index([where if kind == "row" else 0 for kind, where in part_refs]),
            from_store=index(from_store),
            store_slots=index([part_refs[p][1] for p in from_store]),
            stored_streams=stored_streams,
            last_ref_pos=last_ref_pos,
            last_ref_index=index(list(last_ref_pos.values())),
            age=age,
            tokens=min(t, max(1, math.ceil(self.config.recompute_fraction * t))),
            cuts=cuts,
        )

    def _commit(self, run: _Pass) -> None:
        """Store, per stream, its last frame's first-layer keys, its newest reference and the age of that."""
        plan = run.plan
        last_row = {s: i for i, s in enumerate(run.streams)}
        for slot, s in enumerate(plan.last_ref_pos):
            self._streams[s] = _StreamCache(run.keys0[last_row[s]].clone(),
                                            [layer.row(slot) for layer in run.references], plan.age[s])
        for s, i in last_row.items():
            if s not in plan.last_ref_pos:
                cache = self._streams[s]
                cache.last_keys0, cache.age = run.keys0[i].clone(), plan.age[s]


def _bound_layer(cache: CachedViT, run: _Pass, index: int) -> Callable[..., torch.Tensor]:
    # The tower passes its forward kwargs on to each layer; none changes what a layer computes in eval mode.
    # Attention weights are not produced: the cached path never runs the attention module.
    def forward(hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *_: Any, **__: Any):
        return cache._layer(run, index, hidden_states, attention_mask)

    return forward


def _find_layers(model: nn.Module) -> tuple[list[nn.Module], list[_LayerParts], int, str | None]:
    """(layers, their parts, prefix tokens, None) for a supported vision tower, else ([], [], 0, why not)."""
    tower = next((getattr(model, name) for name in ("vision_model", "vision_tower")
                  if isinstance(getattr(model, name, None), nn.Module)), model)
    layers = None
    for path in ("encoder.layers", "encoder.layer", "layers"):  # CLIP/SigLIP, BERT-style towers (DINOv2), ViT
        try:
            layers = tower.get_submodule(path)
            break
        except AttributeError:
            continue
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        return [], [], 0, (f"no encoder layer list found in {type(tower).__name__} "
                           "(looked for encoder.layers, encoder.layer, layers)")
    families = _families()
    kinds = {type(layer) for layer in layers}
    if len(kinds) != 1 or next(iter(kinds)) not in families:
        names = ", ".join(sorted(k.__name__ for k in kinds))
        return [], [], 0, (f"encoder layers of type {names} are not a supported family "
                           f"({', '.join(k.__name__ for k in families)})")
    build, prefix = families[next(iter(kinds))]
    try:
        parts = [build(layer) for layer in layers]
    except AttributeError as exc:  # the family's layout changed in this transformers version
        return [], [], 0, f"{next(iter(kinds)).__name__} does not have the expected modules: {exc}"
    return list(layers), parts, prefix, None


def _default_forward(model: nn.Module) -> Callable[[torch.Tensor], Any]:
    if hasattr(model, "get_image_features"):
        return lambda pixels: model.get_image_features(pixel_values=pixels)
    return lambda pixels: model(pixel_values=pixels)


def _heads(x: torch.Tensor, parts: _LayerParts) -> torch.Tensor:
    """[B, L, D] -> [B, heads, L, head_dim]"""
    return x.view(x.shape[0], x.shape[1], parts.heads, parts.head_dim).transpose(1, 2)


def _attend(parts: _LayerParts, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Out-projected attention of queries [B,q,D] over keys and values [B,T,D]; no mask (vision towers use none)."""
    attn = F.scaled_dot_product_attention(_heads(queries, parts), _heads(keys, parts), _heads(values, parts),
                                          scale=parts.scale)
    return parts.out(attn.transpose(1, 2).reshape(queries.shape[0], queries.shape[1], -1))


def _full_rows(parts: _LayerParts, x: torch.Tensor, normed: torch.Tensor, keys: torch.Tensor,
               out: torch.Tensor) -> _Reference:
    """The layer in full on reference rows, into ``out``; returns what later frames reuse."""
    values = parts.v(normed)
    attn_out = _attend(parts, parts.q(normed), keys, values)
    h = x + attn_out
    mlp_out = parts.mlp(parts.ln2(h))
    torch.add(h, mlp_out, out=out)
    return _Reference(keys, values, attn_out, mlp_out)


def _gather(stored: list[_Reference], batch_refs: _Reference | None, plan: _Plan) -> _Reference:
    """Each partial row's reference tensors, [P, T, D] each, in new memory: from this batch's reference rows,
    then, for the rows whose reference came from an earlier call, from the stored ones."""
    def stacked(name: str) -> torch.Tensor:
        if batch_refs is not None:
            out = getattr(batch_refs, name).index_select(0, plan.from_batch)
        else:
            first = getattr(stored[0], name)
            out = first.new_empty((len(plan.from_batch), *first.shape))
        if stored:
            out[plan.from_store] = torch.stack([getattr(r, name) for r in stored]).index_select(0, plan.store_slots)
        return out

    return _Reference(stacked("keys"), stacked("values"), stacked("attn_out"), stacked("mlp_out"))


def _partial_rows(parts: _LayerParts, x: torch.Tensor, normed: torch.Tensor, keys: torch.Tensor,
                  ref: _Reference, count: int, prefix: int, out: torch.Tensor) -> None:
    """The layer on non-reference rows, into ``out``, recomputing only the ``count`` tokens least similar to the
    reference. Writes into ``ref``'s tensors, which are this layer's own copies (``_gather``)."""
    similarity = _cosine(keys, ref.keys)
    similarity[:, :prefix] = -math.inf  # CLS always recomputed: the pooled embedding reads it
    rows = similarity.topk(count, dim=1, largest=False).indices  # [P, count]
    pick = rows.unsqueeze(-1).expand(-1, -1, x.shape[-1])
    chosen = normed.gather(1, pick)
    values = ref.values.scatter_(1, pick, parts.v(chosen))  # V: new for recomputed rows, cached for the rest
    h = x + ref.attn_out.scatter_(1, pick, _attend(parts, parts.q(chosen), keys, values))
    torch.add(h, ref.mlp_out.scatter_(1, pick, parts.mlp(parts.ln2(h.gather(1, pick)))), out=out)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine per token of [P,T,D] tensors, accumulated in float32 (bf16 sums would tie near 1.0)."""
    dot = (a * b).sum(dim=-1, dtype=torch.float32)
    norms = a.norm(dim=-1, dtype=torch.float32) * b.norm(dim=-1, dtype=torch.float32)
    return dot / norms.clamp_min(1e-12)


def encode_skipping(encode: Callable[[list[FrameBatch]], list[FeatureBatch]], skipper: FrameSkipper | None,
                    batches: list[FrameBatch]) -> list[FeatureBatch]:
    """Encode batches (of several streams), running the ViT only on frames ``skipper`` says changed.

    Two segments of one stream in one call are planned in order (`FrameSkipper.plan_all`), exactly as
    two calls would plan them.
    """
    if skipper is None:
        return encode(batches)
    masks = skipper.plan_all(batches)
    encoded = iter(encode([_subset(b, m) for b, m in zip(batches, masks) if m.any()]))
    return [skipper.fill(b, next(encoded) if m.any() else None, m) for b, m in zip(batches, masks)]


def _subset(batch: FrameBatch, mask: np.ndarray) -> FrameBatch:
    return FrameBatch(batch.segment, batch.pts_s[mask], batch.images[mask],
                      [t for t, keep in zip(batch.thumbnails, mask) if keep] if batch.thumbnails else [])
