"""AlertLog against a real redis-server: idempotent recording, newest-first listing, acks, trimming, audit."""

from __future__ import annotations

import pytest
import redis

from contracts import messages
from pipelines.moderation.alerts import AlertLog


@pytest.fixture
def log(redis_server) -> AlertLog:
    return AlertLog(redis.Redis.from_url(redis_server.address), "ll")


def alert(alert_id: str, stream: str = "room-1", update: int = 0, state: str = "RED", tenant: str = "t1",
          **fields) -> messages.Alert:
    return messages.Alert(tenant_id=tenant, stream_id=stream, alert_id=alert_id, update=update, state=state,
                          score=0.9, reason=f"{alert_id} update {update}", **fields)


def test_recent_is_newest_first_one_entry_per_alert_with_its_latest_update(log):
    log.record(alert("a", update=0, state="YELLOW"))
    log.record(alert("b", stream="room-2"))
    log.record(alert("a", update=1, state="RED"))
    log.record(alert("a", update=2, state="GREEN", event="resolve"))
    got = log.recent("t1")
    assert [(a.alert_id, a.update, a.state) for a in got] == [("a", 2, "GREEN"), ("b", 0, "RED")]
    assert [a.alert_id for a in log.recent("t1", limit=1)] == ["a"]
    assert log.recent("other-tenant") == []


@pytest.mark.parametrize(
    "filters, expected",
    [
        ({"room_id": "room-2"}, ["c", "b"]),
        ({"stream_id": "room-1"}, ["a"]),
        ({"room_id": "room-3"}, []),
        ({"room_id": "room-2", "stream_id": "room-2"}, ["c", "b"]),
    ],
)
def test_recent_filters_by_room(log, filters, expected):
    for alert_id, stream in [("a", "room-1"), ("b", "room-2"), ("c", "room-2")]:
        log.record(alert(alert_id, stream=stream))
    assert [a.alert_id for a in log.recent("t1", **filters)] == expected


def test_room_and_stream_filters_must_agree(log):
    with pytest.raises(ValueError, match="a room is a stream"):
        log.recent("t1", room_id="x", stream_id="y")


def test_replayed_and_older_updates_are_not_appended_again(log):
    first = alert("a", update=1)
    for _ in range(3):
        assert log.record(first) == "a"
    log.record(alert("a", update=0))  # an older update arriving late changes nothing
    assert log.client.xlen("ll:{t1}:alerts") == 1
    assert log.get("t1", "a").update == 1


def test_get_and_ack(log):
    log.record(alert("a", state="YELLOW"))
    assert log.get("t1", "nope") is None
    assert log.ack("t1", "nope", by="rev") is False
    assert log.get("t1", "a").ack is None
    assert log.ack("t1", "a", by="rev-1", note="looked, paused the room") is True
    assert log.ack("t1", "a", by="rev-2") is True  # audited, but the first acknowledgement is kept
    acked = log.get("t1", "a")
    assert (acked.ack.by, acked.ack.note) == ("rev-1", "looked, paused the room")
    assert log.recent("t1")[0].ack == acked.ack
    log.record(alert("a", update=1, state="RED"))  # an update keeps the episode's acknowledgement
    assert log.get("t1", "a").ack.by == "rev-1"
    trail = log.audit_trail("t1", "room-1")
    assert [(e["event"], e["by"], e["first"]) for e in trail] == [("ack", "rev-2", False), ("ack", "rev-1", True)]


def test_trimmed_alerts_leave_the_index_and_their_acks(redis_server):
    log = AlertLog(redis.Redis.from_url(redis_server.address), "ll", max_alerts=10)
    for i in range(400):
        log.record(alert(f"a{i}"))
        if i == 0:
            log.ack("t1", "a0", by="rev")
    length = log.client.xlen("ll:{t1}:alerts")
    assert length < 400  # MAXLEN ~ trims whole macro nodes, so more than 10 stay
    assert log.client.zcard("ll:{t1}:alert-index") == length
    assert log.get("t1", "a0") is None and not log.client.hexists("ll:{t1}:alert-acks", "a0")
    assert log.get("t1", "a399").alert_id == "a399"
    assert len(log.recent("t1", limit=1000)) == length


def test_audit_trail_is_per_room_newest_first(log):
    log.audit("t1", "room-1", {"event": "state", "state": "YELLOW"})
    log.audit("t1", "room-1", {"event": "verdict", "outcome": "RED"})
    log.audit("t1", "room-2", {"event": "state", "state": "RED"})
    trail = log.audit_trail("t1", "room-1")
    assert [e["event"] for e in trail] == ["verdict", "state"]
    assert all(e["id"] and e["at"] for e in trail)
    assert [e["event"] for e in log.audit_trail("t1", "room-1", limit=1)] == ["verdict"]
    assert log.audit_trail("t2", "room-1") == []


def test_alert_v1_records_are_read_as_the_current_version():
    v1 = (b'{"schema": "alert", "version": 1, "tenant_id": "t", "stream_id": "s", "alert_id": "x", '
          b'"kind": "moderation", "state": "RED", "score": 0.9, "reason": "r", "evidence": []}')
    decoded, _ = messages.decode(len(v1).to_bytes(4, "big") + v1, expect=messages.Alert)
    assert (decoded.version, decoded.alert_id, decoded.update, decoded.drivers) == (3, "x", 0, [])
