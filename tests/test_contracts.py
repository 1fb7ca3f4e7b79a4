"""Kafka contracts, offset bookkeeping and configuration: table-driven, no services."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime, timedelta, timezone
from typing import ClassVar, Literal

import pytest
from kafka.structs import TopicPartition
from pydantic import ConfigDict, Field, ValidationError

from contracts import messages
from pipelines.config import LivelensConfig
from pipelines.kafka.offsets import OffsetTracker
from tests.legacy_records import framed

SEG = messages.VideoSegment(tenant_id="t", stream_id="s", seq=3, codec="h264", wallclock_start=messages.utcnow(),
                            media_start_s=6.0, duration_s=2.0, width=640, height=360, payload_bytes=10)


def record(message: messages.Message, payload: bytes = b"") -> tuple[bytes, messages.Headers]:
    """(value, headers) as this build writes them, the value as the broker hands it back (bytes)."""
    if isinstance(message, messages.VideoSegment):
        value, headers = messages.segment_record(message, payload)
        return bytes(value), headers
    return messages.encode(message), []


MESSAGES = [
    (SEG, b"\x00\x01payload"),
    (messages.Query(tenant_id="t", text="what happened", scope=messages.TimeScope(since_s=60)), b""),
    (messages.Answer(tenant_id="t", query_id="q", answer="a", extractive=True), b""),
    (messages.Alert(tenant_id="t", stream_id="s", state="RED", score=0.9, reason="r"), b""),
    (messages.DeadLetter(tenant_id="t", source_topic="x", partition=0, offset=1, stage="decode",
                         code="decode_error", reason="r"), b""),
]


@pytest.mark.parametrize("message, payload", MESSAGES)
@pytest.mark.parametrize("contract", [2, 1])
def test_every_message_round_trips_in_both_wire_contracts(message, payload, contract):
    value, headers = record(message, payload) if contract == 2 else (framed(message, payload), [])
    decoded, rest = messages.decode(value, headers=headers)
    assert decoded == message and rest == payload


@pytest.mark.parametrize("message, payload", MESSAGES)
def test_contract_2_values_are_plain_json_or_the_raw_segment(message, payload):
    """What kcat, a Connect sink or any other Kafka tool sees, without livelens's code."""
    value, headers = record(message, payload)
    if isinstance(message, messages.VideoSegment):
        assert value == payload
        meta = dict(headers)
        assert meta["livelens.contract"] == b"2"
        assert json.loads(meta["livelens.segment"]) == json.loads(message.model_dump_json(by_alias=True))
        assert {"chunk_index", "chunk_count", "schema", "version"} <= set(json.loads(meta["livelens.segment"]))
    else:
        assert headers == []
        assert json.loads(value) == json.loads(message.model_dump_json(by_alias=True))
        assert json.loads(value)["schema"] == message.SCHEMA


def test_a_segment_is_never_written_as_json():
    with pytest.raises(TypeError, match="segment_record"):
        messages.encode(SEG)


def _raw(header: bytes) -> bytes:
    return struct.pack(">I", len(header)) + header


@pytest.mark.parametrize(
    "value, code",
    [
        (b"", "malformed_message"),
        (b"\x00\x00", "malformed_message"),
        (b"\xff\xff\xff\xff{}", "malformed_message"),
        (_raw(b"not json"), "malformed_message"),
        (_raw(b"[1,2]"), "malformed_message"),
        (_raw(b'{"schema": "nope", "version": 1}'), "unknown_schema"),
        (_raw(b'{"schema": "query", "version": 99, "tenant_id": "t"}'), "unknown_version"),
        (_raw(b'{"schema": "query", "version": 1, "tenant_id": "bad tenant!"}'), "invalid_message"),
        (_raw(b'{"schema": "query", "version": 1, "tenant_id": "t", "top_k": 100000}'), "invalid_message"),
    ],
)
def test_malformed_records_get_a_stable_code(value, code):
    with pytest.raises(messages.MessageError) as err:
        messages.decode(value)
    assert err.value.code == code


@pytest.mark.parametrize(
    "value, headers, code",
    [
        (b'{"schema": "query", "version": 1, "tenant_id": ', [], "malformed_message"),
        (b'{"schema": "nope", "version": 1}', [], "unknown_schema"),
        (b'{"schema": "query", "version": 1, "tenant_id": "t", "top_k": 0}', [], "invalid_message"),
        (b"\x47video", [("livelens.segment", b"not json")], "malformed_message"),
        (b"\x47video", [("livelens.segment", b"[1]")], "malformed_message"),
        (b"\x47video", [("livelens.segment", b'{"schema": "query", "version": 1, "tenant_id": "t"}')],
         "unexpected_schema"),
        (b"\x47video", [("livelens.segment", b'{"schema": "video_segment", "version": 1}')], "invalid_message"),
        (b"\x47video", [("livelens.segment", b" " * (messages.MAX_HEADER_BYTES + 1))], "malformed_message"),
        # Raw segment bytes without their metadata header are not a framed record either.
        (b"\x47" * 1000, [], "malformed_message"),
    ],
)
def test_malformed_contract_2_records_get_a_stable_code(value, headers, code):
    with pytest.raises(messages.MessageError) as err:
        messages.decode(value, expect=messages.VideoSegment if headers else None, headers=headers)
    assert err.value.code == code


def test_wrong_schema_for_the_topic_is_refused():
    with pytest.raises(messages.MessageError) as err:
        messages.decode(messages.encode(messages.Query(tenant_id="t")), expect=messages.VideoSegment)
    assert err.value.code == "unexpected_schema"


class QueryV2(messages.Message):
    """What a future query version might look like: `text` renamed to `prompt`."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)
    SCHEMA: ClassVar[str] = "query"
    VERSION: ClassVar[int] = 2
    schema_: Literal["query"] = Field("query", alias="schema")
    version: Literal[2] = 2
    prompt: str


@pytest.mark.parametrize("write", [messages.encode, framed], ids=["contract 2", "contract 1"])
def test_old_versions_are_still_read_through_registered_upgrades(monkeypatch, write):
    v1_record = write(messages.Query(tenant_id="t", text="when did it rain"))
    monkeypatch.setitem(messages._CURRENT, "query", QueryV2)
    with pytest.raises(messages.MessageError) as err:  # no upgrade registered yet: refused loudly
        messages.decode(v1_record)
    assert err.value.code == "unknown_version"
    monkeypatch.setitem(messages.UPGRADES, ("query", 1), lambda h: {**h, "prompt": h.pop("text")})
    decoded, _ = messages.decode(v1_record)
    assert isinstance(decoded, QueryV2) and decoded.prompt == "when did it rain" and decoded.version == 2


@pytest.mark.parametrize("size, limit, chunks", [(0, 100_000, 1), (50_000, 100_000, 1), (250_000, 100_000, 3),
                                                 (3_000_000, 900_000, 4)])
def test_chunking_fits_the_limit_and_reassembles(size, limit, chunks):
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    parts = list(messages.chunk_segment(SEG, payload, limit))
    assert len(parts) == chunks
    for seg, part in parts:
        value, headers = messages.segment_record(seg, part)
        assert len(value) + sum(len(k) + len(v) for k, v in headers) <= limit
    assert b"".join(p for _, p in parts) == payload
    assert [s.chunk_index for s, _ in parts] == list(range(chunks))
    assert all(s.chunk_count == chunks and s.payload_bytes == size for s, _ in parts)


TP = TopicPartition("t", 0)


@pytest.mark.parametrize(
    "added, done, commit",
    [
        ([0, 1, 2], [], 0),
        ([0, 1, 2], [0], 1),
        ([0, 1, 2], [1, 2], 0),  # out-of-order completion never skips the pending record
        ([0, 1, 2], [2, 0, 1], 3),
        ([5, 6], [5, 6], 7),
    ],
)
def test_commit_point_never_passes_a_pending_offset(added, done, commit):
    tracker = OffsetTracker()
    for o in added:
        tracker.add(TP, o)
    for o in done:
        tracker.done(TP, o)
    assert tracker.to_commit() == {TP: commit}
    tracker.mark_committed({TP: commit})
    assert tracker.to_commit() == {}


def test_config_layers_profile_env_and_short_names(monkeypatch):
    monkeypatch.setenv("LIVELENS_DECODE__SAMPLE_FPS", "2.5")
    monkeypatch.setenv("LIVELENS_KAFKA_BOOTSTRAP", "k:9092")
    monkeypatch.setenv("RAY_ADDRESS", "ray:6379")
    config = LivelensConfig(profile="gpu")
    assert config.decode.sample_fps == 2.5
    assert config.kafka.bootstrap == "k:9092" and config.ray.address == "ray:6379"
    assert config.encode.device == "cuda" and config.encode.dtype == "bfloat16"
    assert LivelensConfig(profile="gpu", encode={"batch_frames": 8}).encode.model.startswith("google/siglip")
    with pytest.raises(Exception):
        LivelensConfig(decode={"sample_fps": 0})


def test_config_reads_a_toml_file(tmp_path, monkeypatch):
    path = tmp_path / "livelens.toml"
    path.write_text('[compress]\ndrop_threshold = 0.25\n[kafka]\ntopic_prefix = "prod."\n')
    monkeypatch.setenv("LIVELENS_CONFIG", str(path))
    config = LivelensConfig()
    assert config.compress.drop_threshold == 0.25 and config.kafka.topic("segments") == "prod.video-segments"


def test_segment_bytes_are_copied_once_each_way():
    """A 2 MB segment: the chunks are views of the payload (the producer copies each into its batch once), the
    parsed payload is a view of the record, and reassembly makes the one new whole-segment buffer."""
    from pipelines.kafka.publish import SegmentAssembler

    payload = bytes(range(256)) * 8000
    segment = SEG.model_copy(update={"payload_bytes": len(payload)})
    parts = list(messages.chunk_segment(segment, payload, 900_000))
    assert len(parts) == 3 and all(isinstance(c, memoryview) and c.obj is payload for _, c in parts)
    records = [record(h, c) for h, c in parts]
    assembler, whole = SegmentAssembler(), None
    for offset, (value, headers) in enumerate(records):
        header, chunk = messages.decode(value, expect=messages.VideoSegment, headers=headers)
        assert chunk.obj is value, "a view of the record, not a copy"
        whole = assembler.add(header, chunk, offset)
    assert whole is not None and type(whole[1]) is bytes and whole[1] == payload and whole[2] == [0, 1, 2]


_V3_FIELDS = {"wallclock_source", "gap_before_s", "timestamp_repairs", "tracks"}


def test_a_v1_segment_is_read_as_current_without_a_session_and_keeps_its_memory_keys():
    """Records a v1 publisher wrote (no session) are still read, and name the same segment as before."""
    v1 = {k: v for k, v in SEG.model_dump(mode="json", by_alias=True).items() if k not in {"session", *_V3_FIELDS}}
    v1["version"] = 1
    decoded, payload = messages.decode(_raw(json.dumps(v1).encode()) + b"data")
    assert isinstance(decoded, messages.VideoSegment) and decoded.version == 3 and payload == b"data"
    assert decoded.tracks == ["video"]  # what a v1 segment carried
    assert decoded.session == "" and decoded.key == "t/s/3"
    from pipelines.ingest.source import segment_info

    assert segment_info(decoded).frame_key(6.5) == "t/s/3/6500"  # what memory stored for it under v1


def test_a_v2_segment_is_read_as_v3_with_the_publishers_clock_nothing_repaired_and_video_alone():
    """v2 publishers (before live-source repair and tracks) are still read: their clock was their own, no gap, no
    repairs, the video track alone."""
    v2 = {k: v for k, v in SEG.model_dump(mode="json", by_alias=True).items() if k not in _V3_FIELDS}
    v2["version"] = 2
    value, headers = b"data", [(messages.SEGMENT_HEADER, json.dumps(v2).encode())]
    decoded, _ = messages.decode(value, expect=messages.VideoSegment, headers=headers)
    assert isinstance(decoded, messages.VideoSegment) and decoded.version == 3
    assert (decoded.wallclock_source, decoded.gap_before_s, decoded.timestamp_repairs) == ("publisher", 0.0, {})
    assert decoded.tracks == ["video"]  # what a v2 segment carried


@pytest.mark.parametrize(
    "session, seq, key, frame_key",
    [
        ("", 3, "t/s/3", "t/s/3/6500"),
        ("a1b2", 3, "t/s/a1b2-3", "t/s/a1b2-3/6500"),
        ("a1b2", 0, "t/s/a1b2-0", "t/s/a1b2-0/6500"),
    ],
)
def test_the_session_names_the_segment(session, seq, key, frame_key):
    from operators.frames import seq_of_frame_key
    from pipelines.ingest.source import segment_info

    seg = SEG.model_copy(update={"session": session, "seq": seq})
    assert seg.key == key
    info = segment_info(seg)
    assert info.segment_id == key.rsplit("/", 1)[-1] and info.frame_key(6.5) == frame_key
    assert seq_of_frame_key(frame_key) == seq


def test_a_session_id_cannot_break_the_keys_it_is_part_of():
    with pytest.raises(ValidationError, match="session"):
        messages.VideoSegment(**{**SEG.model_dump(), "session": "a/b-c"})


@pytest.mark.parametrize(("bound", "refused"), [
    (datetime(1, 1, 1), True),  # naive: read as local time, which falls in year 0
    (datetime(1, 1, 2), False),
    (datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))), False),
    (datetime.max, False),
    (datetime(2026, 12, 7, 12, tzinfo=UTC), False),
])
@pytest.mark.parametrize("field", ["start", "end"])
def test_a_time_scope_bound_without_an_epoch_time_is_refused_as_bad_input(bound, refused, field):
    """Found by the fuzz test: such a bound passed validation and failed when the query ran (an HTTP 500)."""
    if refused:
        with pytest.raises(ValidationError, match="has no epoch time"):
            messages.TimeScope(**{field: bound})
    else:
        assert messages.TimeScope(**{field: bound}).resolve()[field == "end"] == bound.timestamp()
