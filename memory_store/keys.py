"""Every Redis key the memory service uses, built in one place.

Layout (``{t}`` is the tenant id, inside braces on purpose):

    ll:tenants                         set     tenant ids that have ever written
    ll:{t}:streams                     set     stream ids of the tenant
    ll:{t}:stream:<stream>             hash    stream stats (first/last times, frames, segments, last seq)
    ll:{t}:frame:<frame key>           hash    one frame: metadata, embedding, kept tokens while in the short tier,
                                               on-screen text (lines, text embedding) when it has some
    ll:{t}:thumb:<frame key>           string  JPEG thumbnail of the frame
    ll:{t}:segment:<stream>:<segment>  set     frame keys of a durable segment: its presence makes replays no-ops
                                               (<segment>: session-seq, or seq alone for segments without a session)
    ll:{t}:ids                         zset    score = index id, member = frame key (FAISS ids are these)
    ll:{t}:text_ids                    zset    score = index id, member = frame key: frames with a text embedding
    ll:{t}:next_id                     string  the last index id handed out
    ll:{t}:timeline:<stream>           zset    score = frame wallclock, member = frame key (recent frames)
    ll:{t}:short:<stream>              zset    score = pts, member = frame key: frames that still hold tokens
    ll:{t}:mid:<stream>                zset    score = wallclock, member = event key: events that hold tokens
    ll:{t}:evtok:<event key>           string  an event's token records (memory_store.events)
    ll:{t}:long:<stream>               zset    score = wallclock, member = entry key: every index entry of the stream
    ll:{t}:boundaries:<stream>         zset    score = wallclock, member = frame key of a frame that began an event
    ll:{t}:segments:<stream>           zset    score = wallclock end, member = <segment>: markers, for retention
    ll:{t}:gaps:<stream>               zset    score = wallclock where video resumed, member = JSON of a `StreamGap`:
                                               stretches without video (a live source away, the publisher waiting)
    ll:{t}:line:<line key>             hash    one transcript line (caption, subtitle, recognised speech): span, text,
                                               source, language, confidence, channel, words, embedding, id
    ll:{t}:lines:<stream>              zset    score = wallclock of the line's start, member = line key (timeline,
                                               retention)
    ll:{t}:line_ids                    zset    score = index id, member = line key (the transcript index's ids)
    ll:{t}:line_next_id                string  the last transcript index id handed out
    ll:{t}:offsets                     hash    "topic:partition" -> highest Kafka offset of a stored segment
    ll:{t}:epoch                       string  random, set by the tenant's first write: names this Redis's data
    ll:{t}:clip:loc:<stream>           hash    <segment> -> where a durable segment's records are (pipelines.clips)
    ll:{t}:clip:media:<stream>         zset    score = stream seconds of the segment's first frame, member = <segment>
    ll:{t}:clip:wall:<stream>          zset    score = wall clock of the segment's first frame, member = <segment>
    ll:{t}:clip:archived:<stream>      zset    score = wall clock, member = <segment>: segments the archive holds

Beside memory, the layers above keep these (built here too, so that one module names every key):

    ll:{t}:standing                    hash    standing queries: query_id -> JSON (pipelines.query.standing)
    ll:{t}:standing-version            string  bumped on every registry change
    ll:{t}:standing-state:<query id>   hash    per-stream firing state of one standing query
    ll:{t}:answer:<query id>           string  an asynchronous query's answer, kept serve.answer_ttl_s
    ll:{t}:quota:queries:<window>      string  queries in one rate window (pipelines.api.guard)
    ll:{t}:quota:pending               zset    pending asynchronous queries, score = when each stops counting
    ll:{t}:moderation:room:<stream>    string  a room's RiskEngine snapshot (pipelines.moderation)
    ll:moderation:pending              hash    decision_id -> RiskDecision JSON, every tenant's, until its verdict
    ll:webhooks:outbox                 stream  standing-query webhooks to deliver, every tenant's (pipelines.query.outbox)
    ll:{t}:backfill:<stream>:<digest>  hash    a backfill's manifest: finished segments, operator snapshots
    ll:{t}:evicted:<stream>:<stage>    string  the operator state of a stream a live stage evicted (idle), kept
                                               pipeline.evicted_state_ttl_s to restore if it returns
    ll:{t}:alerts, alert-index, alert-acks, audit:<room>   the alert log (pipelines.moderation.alerts)
    ll:{t}:settings:<stream>           hash    a stream's overrides of global settings (retention_s, sample_fps)
    ll:{t}:control:<stream>            hash    a stream's state as operators set it: live, paused, deleted
                                               (pipelines.stream_state); survives a purge
    ll:{t}:counters:<stream>           hash    counters of stream control (segments_skipped)
    ll:{t}:controlled                  set     stream ids that have a control state
    ll:{t}:skipped:<stream>:<pause id> hash    per partition, the offsets of segments skipped while paused
    ll:{t}:stream-audit                stream  who paused, resumed, deleted, purged which stream: no content;
                                               survives a purge
    ll:stream-control:catchups         hash    job id -> a pending catch-up of a resumed stream (JSON)

Erasing a stream (`livelens streams delete --purge`) deletes every key of the stream the registry below
names (`stream_keys`, `stream_key_patterns`), the stream's members of the tenant's id sets and its field
in per-query hashes. A new tier registers its key names with `register_stream_keys`, and is then erased
with the rest; tests/memory_store/test_erase.py fails for a per-stream key builder here that is neither
registered nor kept on purpose (`KEPT_ON_PURGE`).

Entries: the frame hash also holds the index entries that are not frames, under
their own keys, with the same metadata fields plus ``kind``: event segments
(``event_key``) and merged entries (``merged_key``). Readers of frames thus read
every kind of entry alike (`records.frame_record`), and ``ids`` / ``timeline``
members may be any entry key.

The braces are a Redis Cluster hash tag: every key of one tenant lands in one
slot, which MULTI/EXEC requires of the keys it touches. ``ll:tenants`` is the one
key outside any tenant, so it is written outside the segment transaction.

Frame keys are ``SegmentInfo.frame_key(pts)``: ``tenant/stream/<segment>/ms``. Line keys are
``tenant/stream/<source>/<channel>/<start ms>`` (`line_key`): a line written again (a replay) finds itself.
"""

from __future__ import annotations

import re

PREFIX = "ll"
TENANTS = f"{PREFIX}:tenants"

# The wire contract's Id rule (contracts.messages.Id). Checked again here because a tenant
# id with a brace would break the hash tag and a '/' would make frame keys ambiguous.
_ID_CHARS = r"[A-Za-z0-9_.:\-]{1,128}"
_ID = re.compile(_ID_CHARS)
_THUMB = re.compile(rf"{PREFIX}:\{{({_ID_CHARS})\}}:thumb:.+")


def check_id(kind: str, value: str) -> str:
    """Return ``value`` if it is a valid tenant or stream id, else raise ValueError."""
    if not _ID.fullmatch(value):
        raise ValueError(f"{kind} id {value!r} must match {_ID.pattern}")
    return value


def _tenant(tenant_id: str) -> str:
    return f"{PREFIX}:{{{check_id('tenant', tenant_id)}}}"


def streams(tenant_id: str) -> str:
    return f"{_tenant(tenant_id)}:streams"


def stream_stats(tenant_id: str, stream_id: str) -> str:
    return f"{_tenant(tenant_id)}:stream:{check_id('stream', stream_id)}"


def frame(tenant_id: str, frame_key: str) -> str:
    return f"{_tenant(tenant_id)}:frame:{frame_key}"


def thumbnail(tenant_id: str, frame_key: str) -> str:
    return f"{_tenant(tenant_id)}:thumb:{frame_key}"


def is_thumbnail(key: str) -> bool:
    """True for keys `thumbnail` builds: a caller-supplied key must never read anything else."""
    return bool(_THUMB.fullmatch(key))


def thumbnail_tenant(key: str) -> str | None:
    """The tenant whose thumbnail `key` is (None for any other key): routes a caller-supplied key to its shard
    and keeps one tenant from reading another's."""
    match = _THUMB.fullmatch(key)
    return match.group(1) if match else None


def segment(tenant_id: str, stream_id: str, segment_id: int | str) -> str:
    """``segment_id``: ``SegmentInfo.segment_id`` (``session-seq``, or a bare seq for segments without a session)."""
    return f"{_tenant(tenant_id)}:segment:{check_id('stream', stream_id)}:{check_id('segment', str(segment_id))}"


def ids(tenant_id: str) -> str:
    return f"{_tenant(tenant_id)}:ids"


def text_ids(tenant_id: str) -> str:
    return f"{_tenant(tenant_id)}:text_ids"


def next_id(tenant_id: str) -> str:
    return f"{_tenant(tenant_id)}:next_id"


def timeline(tenant_id: str, stream_id: str) -> str:
    return f"{_tenant(tenant_id)}:timeline:{check_id('stream', stream_id)}"


def short_tier(tenant_id: str, stream_id: str) -> str:
    return f"{_tenant(tenant_id)}:short:{check_id('stream', stream_id)}"


def mid_tier(tenant_id: str, stream_id: str) -> str:
    return f"{_tenant(tenant_id)}:mid:{check_id('stream', stream_id)}"


def event_tokens(tenant_id: str, event_key: str) -> str:
    return f"{_tenant(tenant_id)}:evtok:{event_key}"


def long_tier(tenant_id: str, stream_id: str) -> str:
    return f"{_tenant(tenant_id)}:long:{check_id('stream', stream_id)}"


def boundaries(tenant_id: str, stream_id: str) -> str:
    return f"{_tenant(tenant_id)}:boundaries:{check_id('stream', stream_id)}"


def gaps(tenant_id: str, stream_id: str) -> str:
    return f"{_tenant(tenant_id)}:gaps:{check_id('stream', stream_id)}"


def segments(tenant_id: str, stream_id: str) -> str:
    return f"{_tenant(tenant_id)}:segments:{check_id('stream', stream_id)}"


def offsets(tenant_id: str) -> str:
    return f"{_tenant(tenant_id)}:offsets"


def epoch(tenant_id: str) -> str:
    return f"{_tenant(tenant_id)}:epoch"


def clip_keys(tenant_id: str, stream_id: str) -> tuple[str, str, str, str]:
    """The clip ledger of a stream (pipelines.clips): locations, by stream time, by wall clock, archived."""
    base = f"{_tenant(tenant_id)}:clip"
    stream = check_id("stream", stream_id)
    return f"{base}:loc:{stream}", f"{base}:media:{stream}", f"{base}:wall:{stream}", f"{base}:archived:{stream}"


def standing(tenant_id: str) -> str:
    return f"{_tenant(tenant_id)}:standing"


def standing_version(tenant_id: str) -> str:
    return f"{_tenant(tenant_id)}:standing-version"


def standing_state(tenant_id: str, query_id: str) -> str:
    return f"{_tenant(tenant_id)}:standing-state:{query_id}"


def quota_queries(tenant_id: str, slot: int) -> str:
    """The tenant's query count in one rate window (pipelines.api.guard.TenantQuotas)."""
    return f"{_tenant(tenant_id)}:quota:queries:{int(slot)}"


def quota_pending(tenant_id: str) -> str:
    """The tenant's pending asynchronous queries, scored by when each stops counting."""
    return f"{_tenant(tenant_id)}:quota:pending"


def answer(tenant_id: str, query_id: str) -> str:
    return f"{_tenant(tenant_id)}:answer:{query_id}"


def moderation_room(tenant_id: str, stream_id: str) -> str:
    return f"{_tenant(tenant_id)}:moderation:room:{stream_id}"


# The one key of moderation outside any tenant: the verifier's queue survives a restart of either side.
MODERATION_PENDING = f"{PREFIX}:moderation:pending"

# Standing-query webhooks waiting or being delivered, every tenant's (pipelines.query.outbox): a stream read by
# a consumer group, so deliveries outlive the actor that queued them.
WEBHOOK_OUTBOX = f"{PREFIX}:webhooks:outbox"


def backfill_manifest(tenant_id: str, stream_id: str, source_digest: str) -> str:
    return f"{_tenant(tenant_id)}:backfill:{check_id('stream', stream_id)}:{source_digest}"


def evicted_state(tenant_id: str, stream_id: str, stage: str) -> str:
    return f"{_tenant(tenant_id)}:evicted:{check_id('stream', stream_id)}:{stage}"


def stream_settings(tenant_id: str, stream_id: str) -> str:
    return f"{_tenant(tenant_id)}:settings:{check_id('stream', stream_id)}"


def stream_control(tenant_id: str, stream_id: str) -> str:
    return f"{_tenant(tenant_id)}:control:{check_id('stream', stream_id)}"


def stream_counters(tenant_id: str, stream_id: str) -> str:
    return f"{_tenant(tenant_id)}:counters:{check_id('stream', stream_id)}"


def controlled_streams(tenant_id: str) -> str:
    return f"{_tenant(tenant_id)}:controlled"


def stream_skipped(tenant_id: str, stream_id: str, pause_id: str) -> str:
    return f"{_tenant(tenant_id)}:skipped:{check_id('stream', stream_id)}:{check_id('pause', pause_id)}"


def stream_audit(tenant_id: str) -> str:
    return f"{_tenant(tenant_id)}:stream-audit"


# Outside any tenant, like MODERATION_PENDING: the control actor's queue of catch-ups survives its restart.
CATCHUPS = f"{PREFIX}:stream-control:catchups"


# -- the erase registry: every kind of key that holds something of one stream ------------------------------
#
# Kinds are the part between the tenant and the stream id: ``ll:{t}:<kind>:<stream>``.
_STREAM_KINDS: list[str] = ["stream", "timeline", "short", "mid", "long", "boundaries", "segments", "settings", "counters",
                            "clip:loc", "clip:media", "clip:wall", "clip:archived", "moderation:room", "audit", "gaps",
                            "lines"]
# ``ll:{t}:<kind>:<stream>:<anything>``
_PREFIXED_KINDS: list[str] = ["segment", "backfill", "skipped", "evicted"]
# ``ll:{t}:<kind>:<tenant>/<stream>/<anything>``: keys named by an entry key (frame keys, event keys, ...)
_ENTRY_KINDS: list[str] = ["frame", "thumb", "evtok", "line"]
# Tenant-wide sorted sets whose members are entry keys (``<tenant>/<stream>/...``): the index id sets.
_ENTRY_SETS: list[str] = ["ids", "text_ids", "line_ids"]
# Tenant-wide sets whose members are stream ids, and hashes (by glob) with one field per stream.
_STREAM_SETS: list[str] = ["streams"]
_STREAM_FIELDS: list[str] = ["standing-state:*"]
# Kept on purpose: the operator's state of the stream (so a purged stream's publisher stays stopped) and the
# audit of the erasure itself. Neither holds content: ids, times, who asked.
KEPT_ON_PURGE = ("control", "controlled", "stream-audit")


def register_stream_keys(*, kinds: tuple[str, ...] = (), prefixed: tuple[str, ...] = (),
                         entry_kinds: tuple[str, ...] = (), entry_sets: tuple[str, ...] = ()) -> None:
    """Name a new tier's keys (same shapes as above), so that erasing a stream erases them too."""
    for registry, names in ((_STREAM_KINDS, kinds), (_PREFIXED_KINDS, prefixed), (_ENTRY_KINDS, entry_kinds),
                            (_ENTRY_SETS, entry_sets)):
        registry.extend(n for n in names if n not in registry)


def _glob(text: str) -> str:
    """``text`` as a literal in a Redis glob (ids allow none of its special characters today; kept safe)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def stream_keys(tenant_id: str, stream_id: str) -> list[str]:
    """Every exactly-named key of the stream (``ll:{t}:<kind>:<stream>``)."""
    check_id("stream", stream_id)
    return [f"{_tenant(tenant_id)}:{kind}:{stream_id}" for kind in _STREAM_KINDS]


def stream_key_patterns(tenant_id: str, stream_id: str) -> list[str]:
    """SCAN globs for the stream's keys with more after its id: segment markers, manifests, entries."""
    base, stream = _tenant(tenant_id), _glob(check_id("stream", stream_id))
    return ([f"{_glob(base)}:{kind}:{stream}:*" for kind in _PREFIXED_KINDS]
            + [f"{_glob(base)}:{kind}:{_glob(tenant_id)}/{stream}/*" for kind in _ENTRY_KINDS])


def entry_sets(tenant_id: str) -> list[str]:
    return [f"{_tenant(tenant_id)}:{name}" for name in _ENTRY_SETS]


def entry_member_pattern(tenant_id: str, stream_id: str) -> str:
    """ZSCAN glob for the stream's entry keys in an id set."""
    return f"{_glob(tenant_id)}/{_glob(check_id('stream', stream_id))}/*"


def stream_sets(tenant_id: str) -> list[str]:
    return [f"{_tenant(tenant_id)}:{name}" for name in _STREAM_SETS]


def stream_field_patterns(tenant_id: str) -> list[str]:
    """SCAN globs for hashes with one field per stream (a standing query's firing state)."""
    return [f"{_glob(_tenant(tenant_id))}:{name}" for name in _STREAM_FIELDS]


def event_key(tenant_id: str, stream_id: str, pts_s: float) -> str:
    """Entry key of the event that begins at the frame at ``pts_s`` (a frame begins at most one event)."""
    return f"{tenant_id}/{stream_id}/e/{round(pts_s * 1000)}"


def merged_key(tenant_id: str, stream_id: str, entry_id: int) -> str:
    """Entry key of a merged entry: named by its index id, which is never reused."""
    return f"{tenant_id}/{stream_id}/m/{int(entry_id)}"


def is_merged_key(entry_key: str) -> bool:
    return entry_key.rsplit("/", 2)[-2] == "m"


def line(tenant_id: str, line_key: str) -> str:
    return f"{_tenant(tenant_id)}:line:{line_key}"


def lines(tenant_id: str, stream_id: str) -> str:
    return f"{_tenant(tenant_id)}:lines:{check_id('stream', stream_id)}"


def line_ids(tenant_id: str) -> str:
    return f"{_tenant(tenant_id)}:line_ids"


def line_next_id(tenant_id: str) -> str:
    return f"{_tenant(tenant_id)}:line_next_id"


def line_key(tenant_id: str, stream_id: str, source: str, channel: str, start_s: float) -> str:
    """A transcript line's identity: one source's channel says one thing starting at one millisecond."""
    return f"{tenant_id}/{stream_id}/{source}/{channel}/{round(start_s * 1000)}"
