"""Standing queries: questions registered once and evaluated against every new segment in memory.

"Notify me when the headline mentions a storm", "when the storm is mentioned" (captions, subtitles,
recognised speech: a segment's transcript lines count at the frame on screen when each line starts),
"when this image appears". A query fires once per
episode: when its condition first holds on a stream, and not again until the condition has been
absent for ``rearm_s`` seconds of stream time (hysteresis), so a headline that stays on screen for a
minute raises one alert, not sixty.

Everything is in stream time (frame pts), never wall time, so replaying a segment evaluates to the
same firings. Registered queries and episode state live in Redis and survive restarts.

Order, per segment (at-least-once, like every livelens output):
1. work out firings from the segment's frames and the stored episode state;
2. produce the alerts and wait for the broker's acknowledgement (webhooks go to an outbox, delivered
   apart from this order by pipelines/query/webhooks.py: best effort, retried, dead-lettered when they fail);
3. only then store the new episode state, including how far the stream was evaluated.
A crash before 3 re-evaluates the segment on replay and may fire again; nothing is lost.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import redis
from pydantic import BaseModel, ConfigDict, Field, model_validator

from contracts import messages
from memory_store import keys
from operators.frames import seq_of_frame_key

log = logging.getLogger(__name__)

# Cosine thresholds a standing query fires at unless it says otherwise. On-screen text (MiniLM):
# a paraphrase of a headline scores ~0.5-0.8, other headlines ~0.0-0.2. Visual (the index encoder):
# an example image taken from the stream scores ~0.95-1.0 against the frames it came from.
DEFAULT_TEXT_SCORE = 0.4
DEFAULT_IMAGE_SCORE = 0.9


class StandingQuery(BaseModel):
    """A registered query. Vectors are computed once, at registration, by the query service's encoders."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    query_id: messages.Id = Field(default_factory=messages.new_id)
    tenant_id: messages.Id
    stream_ids: list[messages.Id] = Field(default_factory=list, description="Empty: every stream of the tenant.")
    text: str = Field("", max_length=4096)
    text_vector: list[float] | None = Field(None, description="On-screen-text embedding of `text`.")
    image_vector: list[float] | None = Field(None, description="Index embedding of the example image.")
    min_score: float | None = Field(None, ge=-1, le=1, description="Cosine to fire at; None: the default per kind.")
    rearm_s: float = Field(10.0, ge=0, description="Seconds of stream time without a match before it can fire again.")
    webhook: str | None = Field(None, max_length=2048, pattern=r"^https?://")
    created_at: float = Field(default_factory=time.time)

    @model_validator(mode="after")
    def _one_kind(self) -> StandingQuery:
        if (self.text_vector is None) == (self.image_vector is None):
            raise ValueError("a standing query needs exactly one of text_vector or image_vector")
        return self

    @property
    def kind(self) -> Literal["text", "image"]:
        return "text" if self.text_vector is not None else "image"

    @property
    def threshold(self) -> float:
        if self.min_score is not None:
            return self.min_score
        return DEFAULT_TEXT_SCORE if self.kind == "text" else DEFAULT_IMAGE_SCORE

    def covers(self, stream_id: str) -> bool:
        return not self.stream_ids or stream_id in self.stream_ids


class StandingQuotaFull(Exception):
    def __init__(self, registered: int, limit: int):
        super().__init__(f"this tenant has {registered} standing queries (max_standing_queries={limit}); "
                         "delete some first")
        self.registered, self.limit = registered, limit


# KEYS: the tenant's registry, its version; ARGV: query id, JSON, the most it may hold ("": no limit). Count,
# check and add in one step: API replicas registering at once cannot each see room for one more and together
# pass the limit. -1: added; else the count that was full.
_REGISTER = """
local registered, limit = redis.call('HLEN', KEYS[1]), tonumber(ARGV[3])
if limit and registered >= limit and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return registered end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCR', KEYS[2])
return -1
"""


class StandingRegistry:
    """Registered queries per tenant, in a Redis hash (query_id -> JSON)."""

    def __init__(self, client: redis.Redis):
        self.client = client
        self._register = client.register_script(_REGISTER)

    def register(self, query: StandingQuery, *, limit: int | None = None) -> StandingQuery:
        """Store the query; with ``limit``, only while the tenant has fewer (else StandingQuotaFull)."""
        registered = self._register(keys=[keys.standing(query.tenant_id), keys.standing_version(query.tenant_id)],
                                    args=[query.query_id, query.model_dump_json(), "" if limit is None else limit])
        if registered >= 0:
            raise StandingQuotaFull(registered, limit)
        return query

    def version(self, tenant_id: str) -> int:
        """Changes whenever the tenant's registry does: evaluators re-read only then."""
        return int(self.client.get(keys.standing_version(tenant_id)) or 0)

    def list(self, tenant_id: str) -> list[StandingQuery]:
        raw = self.client.hgetall(keys.standing(tenant_id))
        return sorted((StandingQuery.model_validate_json(v) for v in raw.values()), key=lambda q: q.created_at)

    def delete(self, tenant_id: str, query_id: str) -> bool:
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hdel(keys.standing(tenant_id), query_id)
            pipe.delete(keys.standing_state(tenant_id, query_id))
            pipe.incr(keys.standing_version(tenant_id))
            removed, _, _ = pipe.execute()
        return bool(removed)


@dataclass(frozen=True)
class FrameView:
    """What evaluation needs of one new frame."""

    frame_key: str
    pts_s: float
    t_end_s: float
    wallclock: float
    embedding: np.ndarray
    text: str
    text_embedding: np.ndarray | None
    # Transcript lines starting while this frame is on screen: (line, its MiniLM embedding).
    spoken: tuple = ()


def frame_views(batch, texts, transcript=None) -> list[FrameView]:
    """FrameViews of a CompressedBatch (and its FrameTexts, when on-screen text is read; its Transcript, when
    the transcript stage runs). A line goes to the frame on screen when it starts, or to the segment's first
    frame when it started before it (a caption row is stored when it leaves the screen, maybe segments later)."""
    seg = batch.segment
    pts = [float(p) for p in batch.pts_s]
    ends = pts[1:] + [max(seg.media_start_s + seg.duration_s, pts[-1])]
    spoken: list[list] = [[] for _ in pts]
    for line, vector in zip(transcript.lines, transcript.embeddings) if transcript is not None and pts else ():
        at = max((i for i, p in enumerate(pts) if p <= line.start_s), default=0)
        spoken[at].append((line, vector))
    return [
        FrameView(frame_key=seg.frame_key(p), pts_s=p, t_end_s=ends[i],
                  wallclock=seg.wallclock_start + (p - seg.media_start_s), embedding=batch.embedding[i],
                  text=texts[i].text if texts else "", text_embedding=texts[i].embedding if texts else None,
                  spoken=tuple(spoken[i]))
        for i, p in enumerate(pts)
    ]


@dataclass(frozen=True)
class Firing:
    """``line``: the transcript line that matched, when what was said fired it rather than on-screen text."""

    query: StandingQuery
    stream_id: str
    frame: FrameView
    score: float
    line: Any = None


@dataclass
class _Episode:
    active: bool = False
    last_match_pts: float = float("-inf")
    evaluated_until: float = float("-inf")


class StandingEvaluator:
    """Evaluates a tenant's standing queries on new frames; `emit` delivers firings before state is stored."""

    def __init__(self, client: redis.Redis, emit: Callable[[list[Firing]], None]):
        self.client = client
        self.registry = StandingRegistry(client)
        self.emit = emit
        # tenant -> (registry version, its queries): parsing a thousand queries' vectors on every segment
        # would cost more than evaluating them.
        self._cache: dict[str, tuple[int, list[StandingQuery]]] = {}

    def _queries(self, tenant_id: str) -> list[StandingQuery]:
        version = self.registry.version(tenant_id)
        cached = self._cache.get(tenant_id)
        if cached is None or cached[0] != version:
            cached = (version, self.registry.list(tenant_id))
            self._cache[tenant_id] = cached
        return cached[1]

    def evaluate(self, tenant_id: str, stream_id: str, frames: list[FrameView]) -> list[Firing]:
        queries = [q for q in self._queries(tenant_id) if q.covers(stream_id)]
        if not queries or not frames:
            return []
        state_keys = [keys.standing_state(tenant_id, q.query_id) for q in queries]
        with self.client.pipeline(transaction=False) as pipe:
            for key in state_keys:
                pipe.hget(key, stream_id)
            stored = pipe.execute()
        episodes = [_Episode(**json.loads(s)) if s else _Episode() for s in stored]
        scores, lines = _scores(queries, frames)
        firings: list[Firing] = []
        for qi, (query, episode) in enumerate(zip(queries, episodes)):
            for fi, frame in enumerate(frames):
                if frame.pts_s <= episode.evaluated_until:
                    continue  # a replayed frame: already evaluated, its firing already delivered
                episode.evaluated_until = frame.pts_s
                if scores[qi, fi] >= query.threshold:
                    if not episode.active:
                        firings.append(Firing(query, stream_id, frame, float(scores[qi, fi]), lines.get((qi, fi))))
                    episode.active, episode.last_match_pts = True, frame.pts_s
                elif episode.active and frame.pts_s - episode.last_match_pts >= query.rearm_s:
                    episode.active = False
        if firings:
            self.emit(firings)
        with self.client.pipeline(transaction=True) as pipe:
            for key, episode in zip(state_keys, episodes):
                pipe.hset(key, stream_id, json.dumps(episode.__dict__))
            pipe.execute()
        return firings


def _scores(queries: list[StandingQuery], frames: list[FrameView]) -> tuple[np.ndarray, dict[tuple[int, int], Any]]:
    """Cosine of every query to every frame [Q, F], -inf where the frame has nothing to compare; and, where a
    transcript line scored higher than the frame's on-screen text, that line by (query, frame)."""
    out = np.full((len(queries), len(frames)), -np.inf, dtype=np.float32)
    lines: dict[tuple[int, int], Any] = {}
    visual = np.stack([f.embedding for f in frames]).astype(np.float32)
    has_text = [i for i, f in enumerate(frames) if f.text_embedding is not None]
    text = np.stack([frames[i].text_embedding for i in has_text]).astype(np.float32) if has_text else None
    for qi, query in enumerate(queries):
        if query.kind == "image":
            vector = np.asarray(query.image_vector, dtype=np.float32)
            if vector.shape[0] == visual.shape[1]:
                out[qi] = visual @ vector
            else:
                log.warning("standing query %s: image vector of %d dims, frames have %d (encoder changed?)",
                            query.query_id, vector.shape[0], visual.shape[1])
            continue
        vector = np.asarray(query.text_vector, dtype=np.float32)
        if text is not None:
            out[qi, has_text] = text @ vector
        for fi, frame in enumerate(frames):
            for line, line_vector in frame.spoken:
                score = float(np.asarray(line_vector, dtype=np.float32) @ vector)
                if score > out[qi, fi]:
                    out[qi, fi], lines[(qi, fi)] = score, line
    return out, lines


def firing_alert(firing: Firing, tenant_id: str) -> messages.Alert:
    f, line = firing.frame, firing.line
    if line is not None:  # what was said fired it: the evidence is the line, shown with the frame on screen then
        start, end = line.start_s, line.end_s
        evidence = messages.Evidence(
            stream_id=firing.stream_id, frame_key=f.frame_key, t_start=start, t_end=end,
            wallclock_start=_utc(f.wallclock + (start - f.pts_s)), wallclock_end=_utc(f.wallclock + (end - f.pts_s)),
            score=firing.score, segment_seq=seq_of_frame_key(f.frame_key), text=line.text, source=line.source,
            confidence=line.confidence)
    else:
        evidence = messages.Evidence(
            stream_id=firing.stream_id, frame_key=f.frame_key, t_start=f.pts_s, t_end=f.t_end_s,
            wallclock_start=_utc(f.wallclock), wallclock_end=_utc(f.wallclock + (f.t_end_s - f.pts_s)),
            score=firing.score, segment_seq=seq_of_frame_key(f.frame_key), text=f.text,
            source="ocr" if f.text else None)
    return messages.Alert(tenant_id=tenant_id, stream_id=firing.stream_id, kind="standing_query",
                          query_id=firing.query.query_id, state="MATCH", event="match", score=firing.score,
                          reason=f"standing query matched: {firing.query.text or 'example image'}",
                          evidence=[evidence])


def _utc(epoch: float):
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC)
