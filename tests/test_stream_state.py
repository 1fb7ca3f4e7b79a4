"""The source's check of a stream's state (`StreamGate`), on a real redis-server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import redis
from kafka.structs import TopicPartition

from contracts import messages
from pipelines.stream_state import StreamGate, StreamState, StreamStates

TP = TopicPartition("segments", 3)


def _segment(session: str, seq: int, produced_at: datetime | None = None) -> messages.VideoSegment:
    return messages.VideoSegment(tenant_id="acme", stream_id="cam", session=session, seq=seq, codec="h264",
                                 wallclock_start=datetime.now(UTC), media_start_s=2.0 * seq, duration_s=2.0,
                                 width=64, height=64, payload_bytes=10,
                                 produced_at=produced_at or datetime.now(UTC))


def test_a_paused_stream_is_skipped_and_its_skipped_offsets_recorded_for_a_catch_up(redis_server):
    client = redis.Redis.from_url(redis_server.address)
    now = [0.0]
    gate = StreamGate(client, ttl_s=1.0, clock=lambda: now[0])
    states = StreamStates(client)
    assert gate.admit(_segment("s1", 0), TP, [10])  # no state: live
    states.put("acme", "cam", StreamState(state="paused", pause_id="p1"))
    assert gate.admit(_segment("s1", 1), TP, [11]), "the state was read less than ttl_s ago"
    now[0] = 1.5
    assert not gate.admit(_segment("s1", 2), TP, [12, 13])
    assert not gate.admit(_segment("s1", 3), TP, [14])
    assert states.skipped("acme", "cam") == 2
    assert states.skipped_span("acme", "cam", "p1") == {TP: (12, 15)}


def test_a_deleted_stream_skips_its_old_sessions_and_a_new_session_starts_it_again(redis_server):
    client = redis.Redis.from_url(redis_server.address)
    states = StreamStates(client)
    deleted_at = datetime.now(UTC)
    states.put("acme", "cam", StreamState(state="deleted", deleted_at=deleted_at.timestamp(),
                                          stopped_sessions=("old",)))
    gate = StreamGate(client, ttl_s=60.0)
    later = deleted_at + timedelta(seconds=5)
    assert not gate.admit(_segment("old", 7, later), TP, [1]), "the deleted session goes on publishing"
    assert not gate.admit(_segment("new", 0, deleted_at - timedelta(seconds=1)), TP, [2]), "produced before"
    assert gate.admit(_segment("new", 0, later), TP, [3]), "a new session after the delete"
    assert states.get("acme", "cam").state == "live"
    assert gate.admit(_segment("new", 1, later), TP, [4])
    assert [e["action"] for e in states.audit_trail("acme", "cam")] == ["revived"]
