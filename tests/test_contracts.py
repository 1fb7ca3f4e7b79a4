"""Kafka contracts, offset bookkeeping and configuration: table-driven, no services."""

from __future__ import annotations

import json
import struct
from typing import ClassVar, Literal

import pytest
from kafka.structs import TopicPartition
from pydantic import ConfigDict, Field, ValidationError

from pipelines import messages
from pipelines.config import LivelensConfig
from pipelines.offsets import OffsetTracker

SEG = messages.VideoSegment(tenant_id="t", stream_id="s", seq=3, codec="h264", wallclock_start=messages.utcnow(),
                            media_start_s=6.0, duration_s=2.0, width=640, height=360, payload_bytes=10)


@pytest.mark.parametrize(
    "message, payload",
    [
        (SEG, b"\x00\x01payload"),
        (messages.Query(tenant_id="t", text="what happened", scope=messages.TimeScope(since_s=60)), b""),
        (messages.Answer(tenant_id="t", query_id="q", answer="a", extractive=True), b""),
        (messages.Alert(tenant_id="t", stream_id="s", state="RED", score=0.9, reason="r"), b""),
        (messages.DeadLetter(tenant_id="t", source_topic="x", partition=0, offset=1, stage="decode",
                             code="decode_error", reason="r"), b""),
    ],
)
def test_every_message_round_trips(message, payload):
    decoded, rest = messages.decode(messages.encode(message, payload))
    assert decoded == message and rest == payload


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


def test_old_versions_are_still_read_through_registered_upgrades(monkeypatch):
    v1_record = messages.encode(messages.Query(tenant_id="t", text="when did it rain"))
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
    assert all(len(messages.encode(seg, part)) <= limit for seg, part in parts)
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


def test_a_v1_segment_is_read_as_v2_without_a_session_and_keeps_its_memory_keys():
    """Records a v1 publisher wrote (no session) are still read, and name the same segment as before."""
    v1 = {k: v for k, v in SEG.model_dump(mode="json", by_alias=True).items() if k != "session"}
    v1["version"] = 1
    decoded, payload = messages.decode(_raw(json.dumps(v1).encode()) + b"data")
    assert isinstance(decoded, messages.VideoSegment) and decoded.version == 2 and payload == b"data"
    assert decoded.session == "" and decoded.key == "t/s/3"
    from pipelines.source import segment_info

    assert segment_info(decoded).frame_key(6.5) == "t/s/3/6500"  # what memory stored for it under v1


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
    from pipelines.source import segment_info

    seg = SEG.model_copy(update={"session": session, "seq": seq})
    assert seg.key == key
    info = segment_info(seg)
    assert info.segment_id == key.rsplit("/", 1)[-1] and info.frame_key(6.5) == frame_key
    assert seq_of_frame_key(frame_key) == seq


def test_a_session_id_cannot_break_the_keys_it_is_part_of():
    with pytest.raises(ValidationError, match="session"):
        messages.VideoSegment(**{**SEG.model_dump(), "session": "a/b-c"})
