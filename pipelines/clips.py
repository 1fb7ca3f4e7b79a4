"""Clips: a playable MP4 of any span of a stream, cut from the segments livelens already has.

Where the video is. Segments travel as MPEG-TS payloads on the segments topic and are decoded, not kept. Once a
segment's memory write is durable, the source records where its records are (topic, partition, offsets) in the
stream's clip ledger in Redis (`ClipLedger`, keys `memory_store.keys.clip_keys`) and, with ``archive.url`` set,
copies its payload to the archive (`pipelines.archive`). Both happen before the source commits the segment's
offsets, so a crash repeats them (they are idempotent) and never skips them.

Cutting. A request for [from, to] (stream seconds) reads the ledger for the segments that cover it, takes each
payload from the archive when it holds it, else from Kafka by offset with a consumer without a group
(`pipelines.kafka.client.make_reader`, as replay reads), decoding records with `messages.decode`. The packets are remuxed,
never re-encoded, into a fragmented MP4 (``frag_keyframe+empty_moov``: playable by browsers while it streams and
written in one pass) that starts at the last keyframe at or before ``from`` and ends before the first keyframe at
or after ``to``: the clip covers the span, give or take one GOP at each end. The audio the segments carry
(pipelines/segment_tracks.py) goes along for the same span; subtitles do not.

Errors a caller can act on are `ClipError` with an HTTP status: 404 for a stream the tenant does not have (other
tenants' streams included) or a span with no video, 410 for a span whose video aged out (the message names the
retention that ran out), 422 for a malformed span, 503 when Kafka does not answer (retry later).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlencode

import redis
from kafka.structs import TopicPartition
from pydantic import BaseModel, ConfigDict

from memory_store import keys
from contracts import messages
from pipelines.archive import SegmentArchive
from pipelines.config import ClipConfig, KafkaConfig, LivelensConfig
from pipelines.kafka import tenancy
from pipelines.kafka.client import make_reader
from pipelines.kafka.retained import retained_segments
from pipelines.clip_media import ClipError, remux

log = logging.getLogger(__name__)


class SegmentLocation(BaseModel):
    """Where one durable segment's records are on the segments topic, and what it covers."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    session: str = ""  # the publishing session; "" for segments published before sessions existed
    seq: int
    media_start_s: float
    duration_s: float
    wallclock_start: float  # epoch seconds
    codec: str
    container: str
    width: int
    height: int
    topic: str
    partition: int
    first_offset: int
    last_offset: int
    payload_bytes: int

    @property
    def media_end_s(self) -> float:
        return self.media_start_s + self.duration_s

    @property
    def segment_id(self) -> str:
        """The segment's name in its stream (``session-seq``): the ledger's and the archive's member."""
        return messages.segment_id(self.session, self.seq)


@dataclass
class Clip:
    data: bytes
    start_s: float  # stream seconds of the clip's first frame
    end_s: float
    segments: list[str]  # segment ids (session-seq)
    from_archive: int = 0
    from_kafka: int = 0


# -- the ledger --------------------------------------------------------------------------------------------


class ClipLedger:
    """Per stream: the location of each durable segment, by stream time and by wall clock, and which ones the
    archive holds. All keys of a stream are in its tenant's hash slot, so each change is one transaction."""

    def __init__(self, client: redis.Redis):
        self.r = client

    def record(self, tenant_id: str, stream_id: str, location: SegmentLocation, *, archived: bool,
               horizon_s: float) -> int:
        """Add (or overwrite) a segment's location; forget locations that started more than ``horizon_s`` of stream
        time before it. Returns how many were forgotten."""
        loc, media, wall, held = keys.clip_keys(tenant_id, stream_id)
        old = self.r.zrangebyscore(media, "-inf", f"({location.media_start_s - horizon_s}")
        member = location.segment_id
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(loc, member, location.model_dump_json())
            pipe.zadd(media, {member: location.media_start_s})
            pipe.zadd(wall, {member: location.wallclock_start})
            if archived:
                pipe.zadd(held, {member: location.wallclock_start})
            if old:
                pipe.hdel(loc, *old)
                for key in (media, wall):
                    pipe.zrem(key, *old)
            pipe.execute()
        return len(old)

    def holds(self, tenant_id: str, stream_id: str, segment_id: str) -> bool:
        loc, _, _, _ = keys.clip_keys(tenant_id, stream_id)
        return bool(self.r.hexists(loc, segment_id))

    def covering(self, tenant_id: str, stream_id: str, t_from: float, t_to: float) -> list[SegmentLocation]:
        """Locations of the segments that overlap [t_from, t_to), in stream order."""
        loc, media, _, _ = keys.clip_keys(tenant_id, stream_id)
        # The segment that starts at or before t_from may run past it; the others start inside the span.
        before = self.r.zrevrangebyscore(media, t_from, "-inf", start=0, num=1)
        inside = self.r.zrangebyscore(media, f"({t_from}", f"({t_to}")
        members = list(dict.fromkeys(before + inside))
        if not members:
            return []
        found = [SegmentLocation.model_validate_json(v) for v in self.r.hmget(loc, members) if v is not None]
        return [f for f in sorted(found, key=lambda f: f.media_start_s) if f.media_end_s > t_from]

    def known_span(self, tenant_id: str, stream_id: str) -> tuple[float, float] | None:
        """(stream seconds of the oldest recorded segment's start, of the newest one's end); None: none recorded."""
        loc, media, _, _ = keys.clip_keys(tenant_id, stream_id)
        oldest = self.r.zrange(media, 0, 0, withscores=True)
        newest = self.r.zrange(media, -1, -1)
        if not oldest:
            return None
        last = self.r.hget(loc, newest[0])
        end = SegmentLocation.model_validate_json(last).media_end_s if last else oldest[0][1]
        return oldest[0][1], end

    def stream_time(self, tenant_id: str, stream_id: str, wallclock: float) -> float | None:
        """Stream seconds at a wall-clock instant, from the segment that began last at or before it (else the
        first one); None when no segment is recorded."""
        loc, _, wall, _ = keys.clip_keys(tenant_id, stream_id)
        members = self.r.zrevrangebyscore(wall, wallclock, "-inf", start=0, num=1) or self.r.zrange(wall, 0, 0)
        stored = self.r.hget(loc, members[0]) if members else None
        if stored is None:
            return None
        f = SegmentLocation.model_validate_json(stored)
        return f.media_start_s + (wallclock - f.wallclock_start)

    def archived(self, tenant_id: str, stream_id: str, segment_ids: Iterable[str]) -> set[str]:
        *_, held = keys.clip_keys(tenant_id, stream_id)
        segment_ids = list(segment_ids)
        scores = self.r.zmscore(held, segment_ids) if segment_ids else []
        return {s for s, score in zip(segment_ids, scores) if score is not None}

    def archived_before(self, tenant_id: str, stream_id: str, wallclock: float) -> list[str]:
        *_, held = keys.clip_keys(tenant_id, stream_id)
        return [s.decode() for s in self.r.zrangebyscore(held, "-inf", f"({wallclock}")]

    def unarchive(self, tenant_id: str, stream_id: str, segment_ids: Sequence[str]) -> None:
        *_, held = keys.clip_keys(tenant_id, stream_id)
        if segment_ids:
            self.r.zrem(held, *segment_ids)


# -- the write side: after a segment is durable ------------------------------------------------------------


class ClipKeeper:
    """What the source does for clips once a segment's memory write is durable, before committing its offsets:
    archive the payload (when an archive is configured), then record its location; then apply the archive's
    retention to the stream. Raises on infrastructure trouble (Redis, the archive's store) so the source retries
    the segment; everything here is idempotent."""

    def __init__(self, config: LivelensConfig, client: redis.Redis):
        self.config = config
        self.ledger = ClipLedger(client)
        self.archive = SegmentArchive(config.archive) if config.archive.url else None
        self.archive_retention_s = config.archive.retention_s
        # By default locations are kept as long as anything may still point at them: memory's hits, the archive.
        self.horizon_s = config.clips.locations_retention_s or max(
            config.memory.retention_s, config.archive.retention_s if self.archive else 0.0)

    def keep(self, segment: messages.VideoSegment, payload: bytes, tp: TopicPartition, offsets: Sequence[int]) -> None:
        tenant, stream = segment.tenant_id, segment.stream_id
        location = SegmentLocation(
            session=segment.session, seq=segment.seq, media_start_s=segment.media_start_s,
            duration_s=segment.duration_s,
            wallclock_start=segment.wallclock_start.timestamp(), codec=segment.codec, container=segment.container,
            width=segment.width, height=segment.height, topic=tp.topic, partition=tp.partition,
            first_offset=min(offsets), last_offset=max(offsets), payload_bytes=len(payload))
        if self.archive is not None:
            self.archive.put(tenant, stream, location.segment_id, payload)
        self.ledger.record(tenant, stream, location, archived=self.archive is not None, horizon_s=self.horizon_s)
        if self.archive is not None:
            expired = self.ledger.archived_before(tenant, stream, location.wallclock_start - self.archive_retention_s)
            # Files first: a crash in between leaves the ledger naming a file that is gone (the reader then
            # falls back to Kafka), never a file that nothing names.
            for segment_id in expired:
                self.archive.delete(tenant, stream, segment_id)
            self.ledger.unarchive(tenant, stream, expired)

    def kept(self, segment: messages.VideoSegment) -> bool:
        """Whether the segment was kept already: its whole chain (memory, standing queries, moderation) finished
        before, since `keep` runs only after it. A replay of it (after a crash or a rebalance) needs nothing."""
        return self.ledger.holds(segment.tenant_id, segment.stream_id, messages.segment_id(segment.session, segment.seq))

    def keep_retained(self) -> int:
        """Keep every whole segment the segments topic (with kafka.tenant_topics, every tenant's) still retains,
        as if the source had just stored it: the ledger (and archive) of segments stored before either existed.
        A segment claiming another tenant than its topic's is skipped, as the source dead-letters it.
        Idempotent; returns how many."""
        kafka, kept = self.config.kafka, 0
        for topic in tenancy.topics_of(kafka, "segments", lambda: _existing_topics(kafka)):
            for tp, segment, payload, offsets in retained_segments(kafka, topic):
                if refused := tenancy.refusal(kafka, "segments", tp.topic, segment.tenant_id):
                    log.warning("not keeping the clip location of %s: %s", segment.key, refused.reason)
                    continue
                self.keep(segment, payload, tp, offsets)
                kept += 1
        return kept


def _existing_topics(kafka: KafkaConfig) -> set[str]:
    reader = make_reader(kafka)
    try:
        return reader.topics()
    finally:
        reader.close()


# -- the read side -----------------------------------------------------------------------------------------


class ClipCutter:
    """Cuts clips for one tenant's streams from the archive and the segments topic."""

    def __init__(self, config: LivelensConfig, client: redis.Redis):
        self.config = config
        self.ledger = ClipLedger(client)
        self.redis = client
        self.archive = SegmentArchive(config.archive) if config.archive.url else None

    def stream_seconds(self, tenant_id: str, stream_id: str, text: str) -> float:
        """A request's time: stream seconds ("12.5") or an ISO 8601 instant (without a zone: UTC)."""
        try:
            return float(text)
        except ValueError:
            pass
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise ClipError("invalid_time", f"{text!r} is neither stream seconds nor an ISO 8601 time", 422) from None
        epoch = when.timestamp() if when.tzinfo else when.replace(tzinfo=UTC).timestamp()
        seconds = self.ledger.stream_time(tenant_id, stream_id, epoch)
        if seconds is None:
            raise self._no_stream(tenant_id, stream_id)
        return seconds

    def cut(self, tenant_id: str, stream_id: str, t_from: float, t_to: float) -> Clip:
        if not t_to > t_from:
            raise ClipError("invalid_span", f"to ({t_to}) must be after from ({t_from})", 422)
        if t_to - t_from > self.config.clips.max_span_s:
            raise ClipError("span_too_long", f"{t_to - t_from:.1f} s asked, clips.max_span_s is "
                            f"{self.config.clips.max_span_s:.0f} s", 422)
        keys.check_id("stream", stream_id)
        locations = self.ledger.covering(tenant_id, stream_id, t_from, t_to)
        if not locations:
            raise self._nothing_in(tenant_id, stream_id, t_from, t_to)
        if len({(f.codec, f.width, f.height) for f in locations}) > 1:
            raise ClipError("format_change", "the span crosses a change of codec or picture size; ask for a span on "
                            "one side of it", 422)
        ids = [f.segment_id for f in locations]
        archived = self.ledger.archived(tenant_id, stream_id, ids) if self.archive else set()
        payloads: dict[str, bytes] = {}
        for f in locations:
            data = self.archive.get(tenant_id, stream_id, f.segment_id) if f.segment_id in archived else None
            if data is not None:
                payloads[f.segment_id] = data
        from_archive = len(payloads)
        missing = [f for f in locations if f.segment_id not in payloads]
        if missing:
            payloads.update(self._from_kafka(tenant_id, stream_id, missing))
        data, start, end = remux([(f, payloads[f.segment_id]) for f in locations], t_from, t_to)
        return Clip(data, start, end, ids, from_archive, len(locations) - from_archive)

    def _nothing_in(self, tenant_id: str, stream_id: str, t_from: float, t_to: float) -> ClipError:
        span = self.ledger.known_span(tenant_id, stream_id)
        if span is None:
            return self._no_stream(tenant_id, stream_id)
        if t_to <= span[0]:
            return ClipError("expired", f"the span ends at {t_to:.1f} s, before the oldest segment livelens still "
                             f"knows of ({span[0]:.1f} s): its location aged out (clips.locations_retention_s, by "
                             "default the longer of memory.retention_s and archive.retention_s)", 410)
        return ClipError("no_video", f"no segment of {stream_id} covers {t_from:.1f}-{t_to:.1f} s (it has "
                         f"{span[0]:.1f}-{span[1]:.1f} s, with gaps where the publisher paused)", 404)

    def _no_stream(self, tenant_id: str, stream_id: str) -> ClipError:
        if self.redis.sismember(keys.streams(tenant_id), stream_id):
            return ClipError("no_video", f"stream {stream_id} has no segment recorded for clips (ingested by "
                             "backfill, or before clips were recorded)", 404)
        return ClipError("not_found", f"no stream {stream_id}", 404)

    def _from_kafka(self, tenant_id: str, stream_id: str, wanted: list[SegmentLocation]) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        by_partition: dict[TopicPartition, list[SegmentLocation]] = {}
        for f in wanted:
            by_partition.setdefault(TopicPartition(f.topic, f.partition), []).append(f)
        reader = make_reader(self.config.kafka, request_timeout_ms=30_000)
        try:
            for tp, locations in by_partition.items():
                out.update(self._read_partition(reader, tp, tenant_id, stream_id, locations))
        finally:
            reader.close()
        return out

    def _read_partition(self, reader, tp: TopicPartition, tenant_id: str, stream_id: str,
                        locations: list[SegmentLocation]) -> dict[int, bytes]:
        from pipelines.kafka.publish import SegmentAssembler

        known = reader.partitions_for_topic(tp.topic)
        if not known or tp.partition not in known:
            raise self._expired(tp, f"{tp.topic} has no partition {tp.partition} any more", locations)
        reader.assign([tp])
        first, end = reader.beginning_offsets([tp])[tp], reader.end_offsets([tp])[tp]
        gone = [f for f in locations if f.first_offset < first or f.last_offset >= end]
        if gone:
            raise self._expired(tp, f"partition {tp.partition} holds offsets {first}..{end - 1}", gone)
        wanted = {f.segment_id: f for f in locations}
        last = max(f.last_offset for f in locations)
        reader.seek(tp, min(f.first_offset for f in locations))
        assembler = SegmentAssembler(max_pending_bytes=max(f.payload_bytes for f in locations) * 2)
        got: dict[int, bytes] = {}
        quiet_since = time.monotonic()
        while len(got) < len(wanted) and reader.position(tp) <= last:
            batch = reader.poll(timeout_ms=200).get(tp, [])
            if batch:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > self.config.clips.read_timeout_s:
                raise ClipError("kafka_unavailable", f"{tp.topic}[{tp.partition}] sent no record for "
                                f"{self.config.clips.read_timeout_s:.0f} s; retry later", 503)
            for record in batch:
                if record.offset > last:
                    break
                try:
                    segment, chunk = messages.decode(record.value, expect=messages.VideoSegment, headers=record.headers)
                except messages.MessageError:
                    continue  # another stream's bad record: the source dead-lettered it already
                named = messages.segment_id(segment.session, segment.seq)
                if (segment.tenant_id, segment.stream_id) != (tenant_id, stream_id) or named not in wanted:
                    continue
                whole = assembler.add(segment, chunk, record.offset)
                if whole is not None:
                    got[named] = whole[1]
        lost = [f for f in locations if f.segment_id not in got]
        if lost:
            raise self._expired(tp, "other records are at their offsets now", lost)
        return got

    def _expired(self, tp: TopicPartition, found: str, gone: list[SegmentLocation]) -> ClipError:
        archive = ("the archive's retention (archive.retention_s) ran out too" if self.archive else
                   "no archive is configured (archive.url) to keep them longer")
        return ClipError("expired", f"Kafka no longer holds segments {[f.segment_id for f in gone]} (offsets "
                         f"{gone[0].first_offset}..{gone[-1].last_offset} of {tp.topic}; {found}): the topic's "
                         f"retention ran out, or the topic was recreated; {archive}", 410)


# -- remux -------------------------------------------------------------------------------------------------


def clip_threads(config: ClipConfig, workers: int = 2) -> ThreadPoolExecutor:
    """Threads to cut clips on, at ``config.nice``: remuxing a long span takes a core for a moment, and that
    moment must come out of idle time, not out of live ingest on the same node."""

    def lower_priority() -> None:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), config.nice)  # Linux: niceness is per thread

    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="clip", initializer=lower_priority)


def save_evidence_clips(cutter: ClipCutter, tenant_id: str, evidence: Sequence[messages.Evidence],
                        folder: Path) -> list[Path | ClipError]:
    """Each piece of evidence's clip (its span padded by clips.margin_s) as ``folder/<rank>-<stream>-<from>-<to>.mp4``;
    a span that cannot be cut gives its ClipError in its place, and the others are still saved."""
    folder.mkdir(parents=True, exist_ok=True)
    margin = cutter.config.clips.margin_s
    out: list[Path | ClipError] = []
    for rank, e in enumerate(evidence, 1):
        try:
            cut = cutter.cut(tenant_id, e.stream_id, max(0.0, e.t_start - margin), e.t_end + margin)
        except ClipError as exc:
            out.append(exc)
            continue
        path = folder / f"{rank:02d}-{e.stream_id}-{cut.start_s:.1f}-{cut.end_s:.1f}.mp4"
        path.write_bytes(cut.data)
        out.append(path)
    return out


# -- URLs on evidence --------------------------------------------------------------------------------------


def clip_url(config: LivelensConfig, tenant_id: str, stream_id: str, t_start: float, t_end: float) -> str:
    """The API path of an evidence span's clip, padded by ``clips.margin_s``. With API keys the key names the
    tenant, so the URL does not: another tenant's key then finds no such stream (404)."""
    margin = config.clips.margin_s
    params = {"from": f"{max(0.0, t_start - margin):.3f}", "to": f"{t_end + margin:.3f}"}
    if not config.serve.api_keys and tenant_id != "default":
        params["tenant_id"] = tenant_id
    return f"/v1/streams/{quote(stream_id)}/clip?{urlencode(params)}"


def with_clip_urls(config: LivelensConfig, tenant_id: str, evidence: Sequence[messages.Evidence]) -> list[messages.Evidence]:
    return [e.model_copy(update={"clip_url": clip_url(config, tenant_id, e.stream_id, e.t_start, e.t_end)})
            for e in evidence]


def alert_with_clip_urls(config: LivelensConfig, alert: messages.Alert) -> messages.Alert:
    return alert.model_copy(update={"evidence": with_clip_urls(config, alert.tenant_id, alert.evidence)})

