"""Typed, versioned contracts for every Kafka topic, and the two wire contracts they travel in.

Wire contract 2, what this build writes (docs/messages.md has the full table), readable by any Kafka tool:

- queries, answers, alerts, dead letters: the record value is the model as plain UTF-8 JSON
  (``schema`` and ``version`` inside); no record headers needed.
- video segments: the record value is the raw segment bytes (a chunk of them for a chunked segment);
  the metadata, chunk index and count included, is the model as JSON in the record header
  ``livelens.segment``, next to ``livelens.contract: 2``.

Wire contract 1, what earlier builds wrote, is still read, so a deployment rolls over without draining
its topics: every value framed as a 4-byte big-endian length N, N bytes of JSON (the model), then the
payload. A value is contract 1 when it has no segment header and does not start with ``{``: a framed
value starts with a zero byte (its header is under 256 KiB), a JSON object never does.

Binary stays binary: base64 in JSON would cost a third more on the broker for every segment.

A schema change adds a new model with ``version`` + 1 and registers an upgrade
from the old one, so records written by older publishers are still read, in either contract.
"""

from __future__ import annotations

import json
import struct
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

_HEADER_LEN = struct.Struct(">I")  # contract 1's length prefix
# Metadata (a segment header, contract 1's framed header) is small; a larger one is malformed or hostile.
MAX_HEADER_BYTES = 256 * 1024

Id = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")]


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class MessageError(ValueError):
    """A record that cannot be read as any known message. ``code`` is stable for dead letters."""

    def __init__(self, code: str, reason: str):
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    SCHEMA: ClassVar[str]
    VERSION: ClassVar[int]

    tenant_id: Id
    produced_at: datetime = Field(default_factory=utcnow)


class VideoSegment(Message):
    """One short container chunk of a stream (topic: video-segments, key: stream_id).

    Large segments travel as several records with the same ``seq`` and
    ``chunk_index`` 0..``chunk_count``-1, on the same partition, in order.
    v3 added ``wallclock_source``, ``gap_before_s`` and ``timestamp_repairs``, all with defaults
    (UPGRADES[("video_segment", 2)]).
    """

    SCHEMA: ClassVar[str] = "video_segment"
    VERSION: ClassVar[int] = 3
    schema_: Literal["video_segment"] = Field("video_segment", alias="schema")
    version: Literal[3] = 3
    stream_id: Id
    session: str = Field(
        "", max_length=64, pattern=r"^[A-Za-z0-9_.]*$",
        description="The publishing session (one `publish` run, one encoder start): its segments are numbered "
        "from 0, so (session, seq) names a segment of the stream. v2; empty only in upgraded v1 records.")
    seq: int = Field(ge=0, description="Segment number within the publishing session, from 0, no gaps.")
    codec: str = Field(description="FFmpeg's canonical codec name of the video track, e.g. h264, vp9, av1.")
    container: str = Field("mpegts", description="FFmpeg format name of the payload: mpegts for the codecs it "
                           "carries, matroska for every other (pipelines.segmenter.segment_container).")
    wallclock_start: datetime = Field(description="Wall-clock time of the segment's first frame (UTC).")
    media_start_s: float = Field(ge=0, description="Seconds from the stream's start to the segment's first frame.")
    duration_s: float = Field(ge=0)
    width: int = Field(ge=0)
    height: int = Field(ge=0)
    payload_bytes: int = Field(ge=0, description="Size of the whole segment, all chunks together.")
    chunk_index: int = Field(0, ge=0)
    chunk_count: int = Field(1, ge=1)
    source: str = Field("", max_length=2048, description="Where the publisher read it (file, URL), for humans.")
    wallclock_source: Literal["publisher", "rtcp", "arrival"] = Field(
        "publisher", description="Which clock wallclock_start comes from: publisher (a file: the session's start "
        "plus stream time), rtcp (an RTSP sender's own clock, from its RTCP sender reports), arrival (a live "
        "source without a clock of its own: when the segment's first frame reached the publisher). v3.")
    gap_before_s: float = Field(0.0, ge=0, description="Stream seconds before this segment with no video: the "
                                "live source dropped, stalled or restarted and the publisher reconnected. v3.")
    timestamp_repairs: dict[str, Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict, max_length=16, description="Packets of this segment whose timestamps the publisher "
        "repaired, by kind: missing, pts_from_dts, dts_from_pts, wrap, reset, jump, non_monotonic, pts_before_dts "
        "(pipelines/timestamps.py). v3.")
    tracks: list[Literal["video", "audio", "subtitle"]] = Field(
        default_factory=lambda: ["video"], min_length=1,
        description="The kinds of track the payload holds (v3): always the video track; the source's audio track, "
        "copied as it is; its text subtitle tracks (SubRip, ASS, WebVTT; MP4 mov_text as SubRip). Closed captions "
        "ride inside the video. With subtitles, or audio MPEG-TS cannot hold, the container is matroska "
        "(pipelines/segment_tracks.py). Upgraded v1 / v2 records list only video, which is what they carried.")

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @property
    def key(self) -> str:
        return f"{self.tenant_id}/{self.stream_id}/{segment_id(self.session, self.seq)}"


def segment_id(session: str, seq: int) -> str:
    """A segment's name within its stream: ``session-seq``, or the bare seq for a v1 record (no session), so
    memory keys written before sessions existed still match a replay of the records that made them."""
    return f"{session}-{seq}" if session else str(seq)


class TimeScope(BaseModel):
    """Wall-clock range; either bound may be open. ``since_s`` means the last N seconds before now."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    start: datetime | None = None
    end: datetime | None = None
    since_s: float | None = Field(None, gt=0)

    @field_validator("start", "end")
    @classmethod
    def _has_epoch_time(cls, bound: datetime | None) -> datetime | None:
        # A naive 0001-01-01 has no epoch time (its local-time conversion falls in year 0): bad input, refused
        # with the rest of the request's errors, not an error when the query runs (tests/security/test_fuzz.py).
        if bound is not None:
            try:
                bound.timestamp()
            except (ValueError, OverflowError) as exc:
                raise ValueError(f"{bound.isoformat()} has no epoch time: {exc}") from exc
        return bound

    def resolve(self, now: datetime | None = None) -> tuple[float | None, float | None]:
        """Epoch-seconds (start, end); None for an open bound."""
        start = self.start.timestamp() if self.start else None
        end = self.end.timestamp() if self.end else None
        if self.since_s is not None:
            since = (now or utcnow()).timestamp() - self.since_s
            start = since if start is None else max(start, since)
        return start, end


class Query(Message):
    """A question about one or more streams (topic: queries, key: tenant_id)."""

    SCHEMA: ClassVar[str] = "query"
    VERSION: ClassVar[int] = 1
    schema_: Literal["query"] = Field("query", alias="schema")
    version: Literal[1] = 1
    query_id: Id = Field(default_factory=new_id)
    stream_ids: list[Id] = Field(default_factory=list, max_length=1000, description="Empty: every stream of the tenant.")
    text: str = Field("", max_length=4096)
    image_jpeg_b64: str | None = Field(None, max_length=4 << 20, description="An example image, JPEG, base64.")
    scope: TimeScope = TimeScope()
    top_k: int = Field(5, ge=1, le=100)
    occurrence: Literal["best", "first", "last"] = Field(
        "best", description="best: the top matches; first / last: the earliest / latest matching moments.")
    adaptive_k: bool = Field(True, description="Cut top_k to the matches that stand out when scores are peaked.")
    generate: bool = Field(True, description="False: evidence only, no answer model.")

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class Evidence(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    stream_id: str
    frame_key: str
    t_start: float = Field(description="Seconds from the stream's start.")
    t_end: float
    wallclock_start: datetime
    wallclock_end: datetime
    score: float
    segment_seq: int
    thumbnail: str | None = Field(None, description="Key of the JPEG thumbnail; GET /v1/thumbnails/{key} serves it.")
    text: str = Field("", description="On-screen text recognised there, when the evidence is a text match.")
    lines: list[dict] = Field(default_factory=list, description="Recognised lines: text, confidence, box "
                              "(4 corners, normalised 0..1).")
    source: Literal["ocr", "caption", "subtitle", "asr"] | None = Field(
        None, description="Where ``text`` came from: on-screen text (ocr), closed captions, a subtitle track or "
        "sidecar, or speech recognition (asr); None for visual evidence. Answer v2 / Alert v3.")
    confidence: float | None = Field(None, description="For transcript evidence: the line's confidence (1 for "
                                     "captions and subtitles).")
    words: list[dict] = Field(default_factory=list, description="For recognised speech with word timings: text, "
                              "start_s, end_s, confidence per word.")
    clip_url: str | None = Field(None, description="API path of a playable MP4 of the span (padded by "
                                 "clips.margin_s): GET it with the same credentials as the query.")


class Answer(Message):
    """The reply to a Query (topic: answers, key: query_id)."""

    SCHEMA: ClassVar[str] = "answer"
    VERSION: ClassVar[int] = 2
    schema_: Literal["answer"] = Field("answer", alias="schema")
    version: Literal[2] = 2
    query_id: Id
    answer: str
    extractive: bool = Field(description="True when no generative model wrote the answer.")
    model: str = ""
    evidence: list[Evidence] = Field(default_factory=list)
    latency_ms: float = 0.0
    error: str | None = None

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class AlertDriver(BaseModel):
    """A moderation detector that drove an alert: its pooled score, what it saw, on how many frames."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    detector: str
    score: float
    labels: list[str] = Field(default_factory=list)
    hit_frames: int = 0


class AlertAck(BaseModel):
    """A reviewer's acknowledgement. Never on the alerts topic: the alert log adds it when it serves an alert."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    by: str = Field(min_length=1, max_length=256)
    note: str = Field("", max_length=4096)
    at: datetime = Field(default_factory=utcnow)


class Alert(Message):
    """A risk or standing-query notification (topic: alerts, key: stream_id).

    Moderation sends one alert per episode of a room (``alert_id`` stays the same from the opening alert to
    the resolution); each update (escalation, de-escalation, resolution) is a new record with the same
    ``alert_id`` and the next ``update``, so readers keep the highest ``update`` per ``alert_id``.
    v2 added every field after ``evidence``, all with defaults (UPGRADES[("alert", 1)]).
    """

    SCHEMA: ClassVar[str] = "alert"
    VERSION: ClassVar[int] = 3
    schema_: Literal["alert"] = Field("alert", alias="schema")
    version: Literal[3] = 3
    stream_id: Id
    alert_id: Id = Field(default_factory=new_id)
    kind: Literal["moderation", "standing_query"] = "moderation"
    query_id: Id | None = Field(None, description="The standing query that fired (kind standing_query).")
    state: Literal["GREEN", "YELLOW", "RED", "MATCH"] = Field(
        description="Room risk for moderation; MATCH for a standing query's firing.")
    score: float
    reason: str
    evidence: list[Evidence] = Field(default_factory=list)
    event: Literal["alert", "escalate", "deescalate", "resolve", "match"] = Field(
        "alert", description="alert opens an episode; escalate / deescalate update it; resolve closes it "
        "(state GREEN); match: a standing query fired.")
    episode: int = Field(0, ge=0, description="Moderation: the room's episode number, from 1.")
    update: int = Field(0, ge=0, description="Moderation: 0 for the opening alert, then one more per update.")
    drivers: list[AlertDriver] = Field(default_factory=list, description="Moderation: the detectors behind it.")
    policy_version: str = Field("", description="Moderation: the version of the tenant policy that decided it.")
    actions: list[str] = Field(default_factory=list, description="What the policy says to do in this state.")
    pts_s: float | None = Field(None, description="Stream seconds of the frame on which it was decided.")
    stream_latency_s: float | None = Field(
        None, description="Stream seconds from the first evidence frame to the decision.")
    latency_s: float | None = Field(
        None, description="Wall-clock seconds from the first evidence frame's capture to the decision.")
    degraded: list[str] = Field(default_factory=list, description="Detectors that could not score some frames "
                                "in the window: decided without them.")
    ack: AlertAck | None = Field(None, description="Set by the alert log (HTTP, CLI), never on the topic.")

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class DeadLetter(Message):
    """A record livelens could not process, and why (topic: dead-letters, key: stream_id or '')."""

    SCHEMA: ClassVar[str] = "dead_letter"
    VERSION: ClassVar[int] = 1
    schema_: Literal["dead_letter"] = Field("dead_letter", alias="schema")
    version: Literal[1] = 1
    stream_id: str = ""
    source_topic: str
    partition: int
    offset: int
    stage: str = Field(description="Where it failed: source, decode, encode, compress, memory, query.")
    code: str = Field(description="Stable reason code, e.g. decode_error, malformed_message, oversize_frame.")
    reason: str = Field(max_length=4096)
    record_bytes: int = 0
    attempts: int = 1

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


StreamAction = Literal["pause", "resume", "delete", "purge", "set"]


class StreamCommand(Message):
    """Manage one stream (topic: stream-control, key: stream_id): what `livelens streams` and the HTTP routes
    under /v1/streams/{stream} do, for automation that lives on Kafka (docs/operations.md, Managing streams).

    pause: ingest acknowledges and skips the stream's segments. resume: ingest again; with ``catch_up``, the
    paused span is re-read from the segments topic while it holds it. delete: stop ingest, keep history until
    retention. purge: delete and erase everything now, irreversibly. set: per-stream overrides.
    """

    SCHEMA: ClassVar[str] = "stream_command"
    VERSION: ClassVar[int] = 1
    schema_: Literal["stream_command"] = Field("stream_command", alias="schema")
    version: Literal[1] = 1
    command_id: str = Field(default_factory=new_id, max_length=64,
                            description="Names the command in the stream's audit trail and in logs.")
    stream_id: Id
    action: StreamAction
    catch_up: bool = Field(False, description="resume only: re-read the paused span from the segments topic.")
    retention_s: float | None = Field(
        None, gt=0, description="set only: the stream's own memory retention in seconds.")
    clear_retention: bool = Field(False, description="set only: back to the global memory.retention_s.")
    sample_fps: float | None = Field(
        None, gt=0, le=60, description="set only: frames per second decoded from the stream's segments.")
    clear_sample_fps: bool = Field(False, description="set only: back to the global decode.sample_fps.")
    requested_by: str = Field("kafka", max_length=256, description="Who asked, for the audit trail.")

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


MESSAGE_TYPES: tuple[type[Message], ...] = (VideoSegment, Query, Answer, Alert, DeadLetter, StreamCommand)

# (schema, old version) -> function turning an old header dict into the next version's dict.
# Register one whenever a model's VERSION goes up; `decode` applies them in a chain.
UPGRADES: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {
    # Alert v2 only added fields with defaults: a v1 header is a valid v2 header.
    ("alert", 1): dict,
    # VideoSegment v2 added the publishing session; v1 publishers had none (their segments keep their keys).
    ("video_segment", 1): lambda header: {**header, "session": ""},
    # VideoSegment v3 added the live source's clock, gaps and timestamp repairs (defaulted: a v2 publisher's clock
    # was always its own) and lists the tracks (v2 segments carried the video alone).
    ("video_segment", 2): lambda header: {**header, "tracks": ["video"]},
    # Answer v2 / Alert v3: evidence says where its words came from (source, confidence, words), all defaulted.
    ("answer", 1): dict,
    ("alert", 2): dict,
}
_CURRENT: dict[str, type[Message]] = {m.SCHEMA: m for m in MESSAGE_TYPES}


# The wire contract this build writes; `decode` reads it and contract 1.
CONTRACT = 2
CONTRACT_HEADER = "livelens.contract"
SEGMENT_HEADER = "livelens.segment"

Headers = list[tuple[str, bytes]]


def encode(message: Message) -> bytes:
    """The record value of a query, answer, alert or dead letter: the model as plain JSON."""
    if isinstance(message, VideoSegment):
        raise TypeError("a video segment travels as segment_record(): raw bytes, its metadata in record headers")
    return message.model_dump_json(by_alias=True).encode()


def segment_record(segment: VideoSegment, chunk: bytes | memoryview) -> tuple[bytes | memoryview, Headers]:
    """(value, headers) of one segment record: the chunk's bytes as they are, the metadata in a header."""
    return chunk, [(CONTRACT_HEADER, str(CONTRACT).encode()),
                   (SEGMENT_HEADER, segment.model_dump_json(by_alias=True).encode())]


def decode(value: bytes | None, expect: type[Message] | None = None,
           headers: Headers | None = None) -> tuple[Message, memoryview]:
    """Parse a record (its value and headers, either wire contract) into (message, payload). Raises MessageError
    with a stable code.

    The payload is a view into ``value``, not a copy: a segment's bytes are copied once, when its chunks
    are joined into the whole segment (`SegmentAssembler`), not once more per record here."""
    segment_header = next((v for k, v in headers or () if k == SEGMENT_HEADER), None)
    if segment_header is not None:
        if len(segment_header) > MAX_HEADER_BYTES:
            raise MessageError("malformed_message", f"{SEGMENT_HEADER} header of {len(segment_header)} bytes")
        return _validate(_json_object(segment_header, SEGMENT_HEADER), expect), memoryview(value or b"")
    if not value:
        raise MessageError("malformed_message", "record is empty")
    if value.lstrip()[:1] == b"{":
        return _validate(_json_object(value, "value"), expect), memoryview(b"")
    return _decode_contract_1(value, expect)


def _decode_contract_1(value: bytes, expect: type[Message] | None) -> tuple[Message, memoryview]:
    """A record framed as earlier builds wrote every record: length, JSON header, payload."""
    if len(value) < _HEADER_LEN.size:
        raise MessageError("malformed_message", "record is shorter than its length prefix")
    (n,) = _HEADER_LEN.unpack_from(value)
    if n > MAX_HEADER_BYTES or _HEADER_LEN.size + n > len(value):
        raise MessageError("malformed_message", f"header length {n} does not fit a {len(value)}-byte record")
    header = _json_object(value[_HEADER_LEN.size : _HEADER_LEN.size + n], "header")
    return _validate(header, expect), memoryview(value)[_HEADER_LEN.size + n :]


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        parsed = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError("malformed_message", f"{what} is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise MessageError("malformed_message", f"{what} is not a JSON object")
    return parsed


def _validate(header: dict[str, Any], expect: type[Message] | None) -> Message:
    """The current model for a JSON object, through the registered upgrades of older versions."""
    schema, version = header.get("schema"), header.get("version")
    model = _CURRENT.get(schema) if isinstance(schema, str) else None
    if model is None:
        raise MessageError("unknown_schema", f"unknown schema {schema!r}")
    if expect is not None and model is not expect:
        raise MessageError("unexpected_schema", f"expected {expect.SCHEMA}, got {schema}")
    if not isinstance(version, int) or version > model.VERSION or version < 1:
        raise MessageError("unknown_version", f"{schema} version {version!r} (this build reads up to {model.VERSION})")
    while version < model.VERSION:
        upgrade = UPGRADES.get((schema, version))
        if upgrade is None:
            raise MessageError("unknown_version", f"no upgrade from {schema} v{version}")
        header = upgrade(header)
        version += 1
        header["version"] = version
    try:
        return model.model_validate(header)
    except ValidationError as exc:
        raise MessageError("invalid_message", _short(exc)) from None


def chunk_segment(segment: VideoSegment, payload: bytes, max_message_bytes: int
                  ) -> Iterator[tuple[VideoSegment, memoryview]]:
    """Split a segment into records that each fit ``max_message_bytes`` (record headers included: the broker
    counts them). The parts are views of ``payload``: the producer copies each into its batch once."""
    room = max_message_bytes - MAX_HEADER_BYTES // 64  # the metadata header is ~600 bytes; keep 4 KiB spare
    count = max(1, -(-len(payload) // room))
    view = memoryview(payload)
    for i in range(count):
        part = view[i * room : (i + 1) * room]
        yield segment.model_copy(update={"chunk_index": i, "chunk_count": count, "payload_bytes": len(payload)}), part


def _short(exc: ValidationError) -> str:
    errs = exc.errors()[:3]
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errs)
