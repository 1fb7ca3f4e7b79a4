"""Spend encoder compute only on tokens that changed: STC-Cacher inside the vision tower (token level).

CachedViT (methods.md section 1)
    Inside the vision tower, every ``reference_every``-th frame of a stream is
    computed in full and each encoder layer keeps its K, V, attention output and
    MLP output. Other frames compute K for all tokens, compare it per position
    with the reference's K, and recompute only the least similar fraction of
    tokens; the rest take the cached attention and MLP outputs. It drives the
    model's own layer modules (layer norms, q/k/v/out projections, MLP): no
    model file is forked.

Its per-stream state is derived (a reference frame recomputes it) and has no snapshot. Skipping whole frames
that did not change is operators/frame_skip.py.
"""


from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from operators.config import ViTCacheConfig

logger = logging.getLogger(__name__)

StreamKey = tuple[str, str]  # (tenant_id, stream_id)


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
