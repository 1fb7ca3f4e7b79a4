"""The live ops overview: is every stream keeping up? Served as `GET /v1/overview`, drawn by the web
dashboard (pipelines/api/dashboard/) and printed by `livelens status`.

Per stream (of every tenant, or of the tenants asked for):

status        live: a segment was stored within ``dashboard.stalled_after_s``; stalled: not, but the
              stream may still be coming (it has been quiet for less than ``ended_after_s``, or a source
              does not answer or its consume loop died); ended: quiet that long, every source healthy.
              Quiet time is measured from when memory stored the newest segment, not from the frames'
              capture time, so a backfill of last week's recording reads as live while it writes.
ingest lag    now minus the capture time (wall clock) of the end of the newest stored frame: how far
              behind the live edge memory is.
fps           frames stored per second over the last ``fps_window_s``, from successive reads of the
              stream's frame count (so an `Overview` must have read at least twice, ≥ 1 s apart).
tokens kept   kept visual tokens the stream holds in the short tier (its newest ``memory.recent_frames``
              frames), their bytes, and their share of the frames' full token grids.
memory        frames and segments stored; where memory counts tokens and bytes per tier (short / mid /
              long) in the stream's stats hash, those counters (``tiers``) and their byte total; the
              memory shards' own stats are in ``actors``.
last alert    the newest alert of the stream among its tenant's newest ``alerts_scanned`` (the alert log).
gaps          stretches of the stream without video (its live source dropped or restarted and the publisher
              reconnected: `memory_store.records.StreamGap`), the newest ones, oldest first.

Everything per stream is read from Redis directly, so the overview still answers when a memory actor is
down; actor stats come from the actors, and an actor that does not answer is listed with its error.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import redis
from pydantic import BaseModel, ConfigDict
from rich.table import Table

from contracts import messages
from memory_store import keys
from memory_store.records import FrameRecord, StreamGap, StreamInfo
from memory_store.redis_tier import RedisTier
from operators.config import BoundaryConfig
from pipelines.config import DashboardConfig, LivelensConfig
from pipelines.moderation.alerts import AlertLog
from pipelines.redis_io import redis_client

StreamStatus = Literal["live", "stalled", "ended"]

# fps needs two reads at least this far apart: closer reads divide a burst by almost nothing.
MIN_RATE_SPAN_S = 1.0
# Seconds an actor has to answer for its stats; a stuck one must not hold up the page.
ACTOR_TIMEOUT_S = 5.0
# Per-tier counters in a stream's stats hash (memory_store.tiers): "<tier>_tokens", "<tier>_bytes".
_TIER_FIELD = re.compile(r"(short|mid|long)_(tokens|bytes)")


def stream_status(quiet_s: float, *, backlog: bool, config: DashboardConfig) -> StreamStatus:
    """live / stalled / ended from the seconds since the stream's last stored segment (module docstring).

    backlog: records may still be on their way (a source does not answer, or its loop died): a quiet
    stream is then stalled, never ended.
    """
    if quiet_s < config.stalled_after_s:
        return "live"
    if quiet_s >= config.ended_after_s and not backlog:
        return "ended"
    return "stalled"


class FrameRate:
    """Frames stored per second, per stream, from successive (time, frames stored so far) readings.

    Keeps, per stream, the readings of the last ``window_s`` plus the newest one before it (the
    reference the rate is taken from), so the rate covers the whole window once reads span it.
    Thread-safe: the HTTP replica serves several pages at once.
    """

    def __init__(self, window_s: float):
        self.window_s = window_s
        self._readings: dict[tuple[str, str], deque[tuple[float, int]]] = {}
        self._lock = threading.Lock()

    def observe(self, stream: tuple[str, str], at: float, frames: int) -> float | None:
        """Record a reading and return the rate over the window; None until readings span MIN_RATE_SPAN_S."""
        with self._lock:
            readings = self._readings.setdefault(stream, deque())
            if readings and (frames < readings[-1][1] or at < readings[-1][0]):
                readings.clear()  # the stream was deleted and restarted, or the clock stepped back
            readings.append((at, frames))
            while len(readings) > 2 and readings[1][0] <= at - self.window_s:
                readings.popleft()
            t0, f0 = readings[0]
        if at - t0 < MIN_RATE_SPAN_S:
            return None
        return (frames - f0) / (at - t0)

    def forget_except(self, streams: set[tuple[str, str]]) -> None:
        """Drop the readings of streams no longer listed, so the tracker does not grow forever."""
        with self._lock:
            for stream in set(self._readings) - streams:
                del self._readings[stream]


class LastAlert(BaseModel):
    model_config = ConfigDict(frozen=True)
    alert_id: str
    kind: str
    state: str
    event: str
    reason: str
    score: float
    produced_at: datetime
    acked: bool

    @classmethod
    def of(cls, alert: messages.Alert) -> LastAlert:
        return cls(alert_id=alert.alert_id, kind=alert.kind, state=alert.state, event=alert.event,
                   reason=alert.reason, score=alert.score, produced_at=alert.produced_at, acked=alert.ack is not None)


class StreamRow(BaseModel):
    """One stream in the overview (field meanings: the module docstring)."""

    model_config = ConfigDict(frozen=True)
    tenant_id: str
    stream_id: str
    status: StreamStatus
    last_frame_at: datetime
    stored_at: datetime
    ingest_lag_s: float
    fps: float | None
    frames: int
    segments: int
    tokens_kept: int
    token_bytes: int
    kept_share: float | None
    tiers: dict[str, dict[str, int]]
    memory_bytes: int | None
    last_alert: LastAlert | None
    gaps: list[StreamGap] = []


class OverviewReport(BaseModel):
    model_config = ConfigDict(frozen=True)
    generated_at: datetime
    refresh_ms: int
    streams: list[StreamRow]
    actors: dict[str, dict[str, Any]]


class TimelineFrame(BaseModel):
    model_config = ConfigDict(frozen=True)
    frame_key: str
    t_start: float
    t_end: float
    wallclock_start: datetime
    drop_ratio: float
    boundary: bool
    text: str
    text_read: bool  # False: the live OCR reader was behind and did not read the frame (ocr.max_lag_s)
    thumbnail: str | None


class StreamDetail(BaseModel):
    """A stream's page: its overview row, its newest frames (event boundaries marked), its newest alerts."""

    model_config = ConfigDict(frozen=True)
    refresh_ms: int
    stream: StreamRow
    frames: list[TimelineFrame]
    alerts: list[messages.Alert]


class TokenHoldings(BaseModel):
    model_config = ConfigDict(frozen=True)
    tokens: int = 0
    bytes: int = 0
    grid_tokens: int = 0

    @property
    def kept_share(self) -> float | None:
        return self.tokens / self.grid_tokens if self.grid_tokens else None


def short_tier_tokens(client: redis.Redis, tenant_id: str, stream_id: str) -> TokenHoldings:
    """Kept tokens of the stream's frames that still hold them: count, bytes (float16 tokens plus int16
    positions, as memory stores them) and the size of those frames' full token grids."""
    members = client.zrange(keys.short_tier(tenant_id, stream_id), 0, -1)
    pipe = client.pipeline(transaction=False)
    for member in members:
        pipe.hmget(keys.frame(tenant_id, member.decode()), ("token_shape", "grid"))
    tokens = nbytes = grid_tokens = 0
    for shape, grid in pipe.execute():
        if shape is None:
            continue  # evicted between the two reads
        k, d = (int(x) for x in shape.split(b","))
        rows, cols = (int(x) for x in grid.split(b","))
        tokens += k
        nbytes += k * (2 * d + 2)
        grid_tokens += rows * cols
    return TokenHoldings(tokens=tokens, bytes=nbytes, grid_tokens=grid_tokens)


def tier_usage(stats_hash: dict[bytes, bytes]) -> dict[str, dict[str, int]]:
    """The per-tier token and byte counters of a stream's stats hash, e.g. {"short": {"tokens": .., "bytes": ..}};
    empty for a memory that does not count per tier."""
    tiers: dict[str, dict[str, int]] = {}
    for name, value in stats_hash.items():
        match = _TIER_FIELD.fullmatch(name.decode())
        if match:
            tiers.setdefault(match.group(1), {})[match.group(2)] = int(float(value))
    return tiers


def last_alerts(alerts: Sequence[messages.Alert]) -> dict[str, messages.Alert]:
    """The first alert of each stream in ``alerts`` (newest first, as the alert log lists them)."""
    out: dict[str, messages.Alert] = {}
    for alert in alerts:
        out.setdefault(alert.stream_id, alert)
    return out


def sources_healthy(source_stats: dict[str, dict[str, Any]]) -> bool:
    """Every source answered and its consume loop is running."""
    return bool(source_stats) and all("error" not in s and s.get("alive", False) for s in source_stats.values())


def build_row(info: StreamInfo, tenant_id: str, *, now: float, fps: float | None, tokens: TokenHoldings,
              tiers: dict[str, dict[str, int]], sources_ok: bool, alert: messages.Alert | None,
              config: DashboardConfig) -> StreamRow:
    """The overview row of one stream from what was read about it (pure: no I/O)."""
    return StreamRow(
        tenant_id=tenant_id, stream_id=info.stream_id,
        status=stream_status(now - info.updated_at, backlog=not sources_ok, config=config),
        last_frame_at=datetime.fromtimestamp(info.last_wallclock, UTC),
        stored_at=datetime.fromtimestamp(info.updated_at, UTC),
        ingest_lag_s=round(now - info.last_wallclock, 3),
        fps=None if fps is None else round(fps, 3), frames=info.frames, segments=info.segments,
        tokens_kept=tokens.tokens, token_bytes=tokens.bytes,
        kept_share=None if tokens.kept_share is None else round(tokens.kept_share, 4),
        tiers=tiers, memory_bytes=sum(t.get("bytes", 0) for t in tiers.values()) if tiers else None,
        last_alert=LastAlert.of(alert) if alert else None, gaps=list(info.gaps),
    )


def boundaries(frames: Sequence[FrameRecord], tenant_id: str, stream_id: str, config: BoundaryConfig) -> list[bool]:
    """Which of a stream's consecutive stored frames start a new event, by the pipeline's online
    event-boundary detector run over them (its state starts at the first frame given)."""
    from operators.boundaries import BoundaryDetector
    from operators.frames import CompressedBatch, SegmentInfo

    if not frames:
        return []
    n = len(frames)
    # The detector reads pts, drop ratio and embedding, which memory keeps for every frame; kept tokens
    # are gone from all but the newest frames, so the batch it reads carries none.
    batch = CompressedBatch(
        segment=SegmentInfo(tenant_id=tenant_id, stream_id=stream_id, seq=frames[0].seq,
                            wallclock_start=frames[0].wallclock_start, media_start_s=frames[0].pts_s,
                            duration_s=frames[-1].t_end_s - frames[0].pts_s),
        pts_s=np.array([f.pts_s for f in frames]), embedding=np.stack([f.embedding for f in frames]),
        kept=np.zeros((n, 1), dtype=bool), tokens=np.zeros((0, 1), dtype=np.float32),
        drop_ratio=np.array([f.drop_ratio for f in frames]), grid=frames[0].grid)
    return BoundaryDetector(config).detect(batch).tolist()


def ray_actor_stats(config: LivelensConfig) -> dict[str, dict[str, Any]]:
    """Stats of the sources, the query consumer, the stream-control actor and the memory shards; ``{"error": ...}`` for one that does not
    answer within ACTOR_TIMEOUT_S (the overview shows it rather than failing)."""
    import ray

    ns = config.ray.namespace
    calls: dict[str, Callable[[Any], Any]] = {}
    for i in range(config.pipeline.sources):
        calls[f"source-{i}"] = lambda actor: actor.stats.remote()
    calls["query-consumer"] = lambda actor: actor.stats.remote()
    calls["stream-control"] = lambda actor: actor.stats.remote()  # commands applied, catch-ups run
    for i in range(config.memory.shards):
        calls[f"memory-{i}"] = lambda actor: actor.call.remote("stats")
    refs: dict[str, Any] = {}
    out: dict[str, dict[str, Any]] = {}
    for name, call in calls.items():
        try:
            refs[name] = call(ray.get_actor(name, namespace=ns))
        except ValueError as exc:
            out[name] = {"error": f"not running: {exc}"}
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=ACTOR_TIMEOUT_S) if refs else ([], [])
    done = set(ready)
    for name, ref in refs.items():
        if ref not in done:
            out[name] = {"error": f"no answer within {ACTOR_TIMEOUT_S:.0f} s"}
            continue
        try:
            stats = ray.get(ref)
        except ray.exceptions.RayError as exc:
            out[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            continue
        stats.pop("latencies_s", None)  # thousands of numbers; the metrics carry their distribution
        out[name] = stats
    return dict(sorted(out.items()))


class Overview:
    """Reads the overview and stream pages. Keep one per process: fps comes from successive reads.

    actor_stats: where actor stats come from (default: the running actors, through Ray).
    clock: epoch seconds (tests pass a fixed one).
    """

    def __init__(self, config: LivelensConfig, client: redis.Redis, *,
                 actor_stats: Callable[[], dict[str, dict[str, Any]]] | None = None,
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.settings = config.dashboard
        self.client = client
        self.tier = RedisTier(client, config.memory)
        self.alerts = AlertLog(client, keys.PREFIX)
        self.rate = FrameRate(self.settings.fps_window_s)
        self._actor_stats = actor_stats or (lambda: ray_actor_stats(config))
        self._clock = clock

    def collect(self, tenants: Sequence[str] | None = None) -> OverviewReport:
        """Every stream of the given tenants (None: of every tenant memory knows)."""
        actors = self._actor_stats()
        rows = [row for tenant in (self.tier.tenants() if tenants is None else tenants)
                for row in self._rows(tenant, actors)]
        if tenants is None:
            self.rate.forget_except({(r.tenant_id, r.stream_id) for r in rows})
        return OverviewReport(generated_at=datetime.fromtimestamp(self._clock(), UTC),
                              refresh_ms=self.settings.refresh_ms, streams=rows, actors=actors)

    def _rows(self, tenant_id: str, actors: dict[str, dict[str, Any]],
              only: str | None = None) -> list[StreamRow]:
        sources_ok = sources_healthy({name: s for name, s in actors.items() if name.startswith("source-")})
        alerts = last_alerts(self.alerts.recent(tenant_id, limit=self.settings.alerts_scanned))
        streams = [info for info in self.tier.streams(tenant_id) if only in (None, info.stream_id)]
        pipe = self.client.pipeline(transaction=False)
        for info in streams:
            pipe.hgetall(keys.stream_stats(tenant_id, info.stream_id))
        rows = []
        for info, stats_hash in zip(streams, pipe.execute()):
            now = self._clock()
            rows.append(build_row(
                info, tenant_id, now=now, fps=self.rate.observe((tenant_id, info.stream_id), now, info.frames),
                tokens=short_tier_tokens(self.client, tenant_id, info.stream_id), tiers=tier_usage(stats_hash),
                sources_ok=sources_ok, alert=alerts.get(info.stream_id), config=self.settings))
        return rows

    def stream(self, tenant_id: str, stream_id: str) -> StreamDetail | None:
        """The stream's row, its newest ``timeline_frames`` frames and its newest alerts; None if unknown."""
        keys.check_id("stream", stream_id)
        rows = self._rows(tenant_id, self._actor_stats(), only=stream_id)
        if not rows:
            return None
        newest = self.client.zrevrange(keys.timeline(tenant_id, stream_id), 0, self.settings.timeline_frames - 1)
        records = [r for r in self.tier.frames(tenant_id, [m.decode() for m in reversed(newest)], tokens=False) if r]
        marks = boundaries(records, tenant_id, stream_id, self.config.boundaries)
        frames = [TimelineFrame(frame_key=r.frame_key, t_start=r.pts_s, t_end=r.t_end_s,
                                wallclock_start=datetime.fromtimestamp(r.wallclock_start, UTC),
                                drop_ratio=round(r.drop_ratio, 4), boundary=mark, text=r.text,
                                text_read=r.text_read, thumbnail=r.thumbnail)
                  for r, mark in zip(records, marks)]
        alerts = self.alerts.recent(tenant_id, stream_id=stream_id, limit=50)
        return StreamDetail(refresh_ms=self.settings.refresh_ms, stream=rows[0], frames=frames, alerts=alerts)


def sampled_overview(config: LivelensConfig, sample_s: float) -> OverviewReport:
    """The overview from a one-off process (`livelens status`): read, wait ``sample_s``, read again, so fps
    has two readings to come from (sample_s 0: one read, fps unknown)."""
    overview = Overview(config, redis_client(config.redis))
    if sample_s > 0:
        overview.collect()
        time.sleep(sample_s)
    return overview.collect()


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _ago(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def overview_table(report: OverviewReport) -> Table:
    """The overview as a terminal table (`livelens status`)."""
    style = {"live": "green", "stalled": "yellow", "ended": "dim"}
    table = Table("tenant", "stream", "status", "ingest lag", "fps", "tokens kept", "memory",
                  "last alert", title=f"streams at {report.generated_at.isoformat(timespec='seconds')}")
    for r in report.streams:
        share = f" ({r.kept_share:.0%})" if r.kept_share is not None else ""
        alert = r.last_alert
        table.add_row(
            r.tenant_id, r.stream_id, f"[{style[r.status]}]{r.status}", _ago(r.ingest_lag_s),
            "-" if r.fps is None else f"{r.fps:.2f}",
            f"{r.tokens_kept:,}{share}", f"{r.frames:,} frames, " + (
                f"{_size(r.token_bytes)} tokens" if r.memory_bytes is None else _size(r.memory_bytes)),
            f"{alert.state} {alert.reason}"[:60] if alert else "-")
    return table
