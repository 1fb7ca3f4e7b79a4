"""Moderation acceptance: rooms from the sample generator with risky on-screen text at known times, through the
real pipeline (broker, redis-server, Ray, OCR, nudenet); and an hour of stream time through the same Moderator.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np
import ray
import redis

from operators.moderation.policy import PolicyBook
from operators.moderation.verify import RuleVerifier
from pipelines.api.client import Client
from pipelines.cli.sample_video import write_sample_video
from pipelines.config import LivelensConfig
from pipelines.kafka.publish import SegmentPublisher
from pipelines.moderation.alerts import AlertLog
from pipelines.moderation.moderator import PENDING_KEY, Moderator
from tests.integration.conftest import wait_for
from tests.operators.moderation import rooms

SLOW_VERIFY_S = 8.0


class SlowRuleVerifier(RuleVerifier):
    """The rule verifier, taking its time like a VLM would, so the test can kill it with a decision in hand."""

    def verify(self, decision):
        time.sleep(SLOW_VERIFY_S)
        return super().verify(decision)


def slow_rules(policies: PolicyBook, config: LivelensConfig) -> SlowRuleVerifier:
    """A ``moderation.verifier`` factory (module:attr)."""
    return SlowRuleVerifier(policies)


POLICY = {
    "default": {
        "version": "it-1",
        "lexicon": {"terms": [{"term": "cocaine", "severity": "RED"}, {"term": "onlyfans", "severity": "YELLOW"}]},
        "verify": {"min_frames": 2},
    }
}
# (stream, inserted text, start s, end s); the clean room has none.
EVENTS = [("room-red", "BEST COCAINE IN TOWN", 6.0, 10.0), ("room-yellow", "FOLLOW MY ONLYFANS", 5.0, 12.0)]
DURATION_S = 16.0


def _by_room(log: AlertLog, room: str) -> list:
    return log.recent("default", room_id=room)


def test_rooms_alert_on_inserted_text_verifier_survives_a_kill_and_reviewers_ack(deployed, tmp_path):
    policy_file = tmp_path / "policy.json"
    policy_file.write_text(json.dumps(POLICY))
    config = deployed(http=True, moderation=dict(enabled=True, policy_file=policy_file,
                                                 verifier="tests.integration.test_moderation:slow_rules"),
                      serve=dict(port=_port(), api_keys={"key-a": "default", "key-b": "other"}))
    client = redis.Redis.from_url(config.redis.url)
    log = AlertLog(client)
    publisher = SegmentPublisher(kafka=config.kafka)
    videos = {}
    for stream, text, start, end in [*EVENTS, ("room-clean", "", 0.0, 0.0)]:
        videos[stream] = tmp_path / f"{stream}.mp4"
        write_sample_video(videos[stream], duration_s=DURATION_S, inserts=[(start, end, text)] if text else [])
        publisher.publish(str(videos[stream]), stream_id=stream, tenant_id="default", pace="fast")

    # RED term: an alert within 3 s of stream time, its evidence on the inserted seconds, without verification.
    red = wait_for(lambda: _by_room(log, "room-red"), 120, "the RED room's alert")[-1]
    assert (red.event, red.state, red.policy_version, red.kind) == ("alert", "RED", "it-1", "moderation")
    assert 0 <= red.pts_s - 6.0 <= 3.0 and red.stream_latency_s <= 3.0
    assert any("term:cocaine" in d.labels or "term~cocaine" in d.labels for d in red.drivers)
    assert red.evidence and all(6.0 <= e.t_start < 10.0 and "COCAINE" in e.text.upper() for e in red.evidence)
    # Each piece of evidence links its clip, the span padded by clips.margin_s (the key names the tenant).
    margin = config.clips.margin_s
    assert [e.clip_url for e in red.evidence] == [
        f"/v1/streams/room-red/clip?from={max(0.0, e.t_start - margin):.3f}&to={e.t_end + margin:.3f}"
        for e in red.evidence]

    # YELLOW term: an alert, and a verification pending in Redis; the verifier dies with it in hand.
    yellow = wait_for(lambda: _by_room(log, "room-yellow"), 120, "the YELLOW room's alert")[-1]
    assert (yellow.state, yellow.event) == ("YELLOW", "alert") and 5.0 <= yellow.pts_s <= 8.0
    pending = wait_for(lambda: client.hkeys(PENDING_KEY), 30, "a pending verification")
    verifier = ray.get_actor("verify-0", namespace=config.ray.namespace)
    time.sleep(1.0)  # into SlowRuleVerifier's sleep
    ray.kill(verifier, no_restart=False)
    # After the restart Ray re-runs the decision; its verdict (persisted over 2 frames: RED) is applied once.
    escalated = wait_for(lambda: [a for a in _by_room(log, "room-yellow") if a.event == "escalate"], 60,
                         "the verdict after the verifier's restart")[0]
    assert escalated.alert_id == yellow.alert_id and escalated.state == "RED" and escalated.update > yellow.update
    assert "confirmed by rules" in escalated.reason
    wait_for(lambda: not client.hkeys(PENDING_KEY), 10, "the pending verification to clear")
    trail = list(reversed(log.audit_trail("default", "room-yellow")))
    events = [(e["event"], e.get("state") or e.get("outcome")) for e in trail]
    assert events[:3] == [("alert", "YELLOW"), ("verdict", "RED"), ("escalate", "RED")], events
    assert trail[1]["decision_id"] == pending[0].decode() == trail[0]["decision_id"]
    assert ray.get(verifier.name.remote()) == "rules"  # the restarted actor

    # The clean room: screened (nudenet on every decoded frame, no failures), no alert.
    moderator = ray.get_actor("moderate-0", namespace=config.ray.namespace)
    stats = wait_for(lambda: (s := ray.get(moderator.stats.remote()))["frames"] >= 3 * DURATION_S - 3 and s, 60,
                     "every room screened")
    assert stats["detectors"]["nudity"]["batches"] >= 3 and stats["detectors"]["nudity"]["failures"] == 0
    assert stats["detectors"]["lexicon"]["failures"] == 0
    assert _by_room(log, "room-clean") == [] and log.audit_trail("default", "room-clean") == []

    # The alerts topic carries the same alerts.
    on_topic = list(Client(config).follow_alerts(from_beginning=True, timeout_s=5))
    assert {(a.alert_id, a.update) for a in on_topic} >= {(red.alert_id, red.update), (escalated.alert_id,
                                                                                       escalated.update)}

    # HTTP: the key decides the tenant; ack, then the ack is on the alert and in the room's audit trail.
    base, key_a, key_b = config_url(config), {"x-api-key": "key-a"}, {"x-api-key": "key-b"}
    assert httpx.get(f"{base}/v1/alerts").status_code == 401
    listed = httpx.get(f"{base}/v1/alerts", params={"room_id": "room-red"}, headers=key_a).json()
    assert [a["alert_id"] for a in listed] == [red.alert_id] and listed[0]["ack"] is None
    assert httpx.get(f"{base}/v1/alerts", headers=key_b).json() == []
    assert httpx.post(f"{base}/v1/alerts/{red.alert_id}/ack", json={"by": "rev-b"}, headers=key_b).status_code == 404
    acked = httpx.post(f"{base}/v1/alerts/{red.alert_id}/ack", json={"by": "rev-a", "note": "paused"},
                       headers=key_a)
    assert acked.status_code == 200 and acked.json()["ack"]["by"] == "rev-a"
    audit = httpx.get(f"{base}/v1/rooms/room-red/audit", headers=key_a).json()
    assert audit[0]["event"] == "ack" and audit[0]["by"] == "rev-a" and audit[-1]["event"] == "alert"


def config_url(config: LivelensConfig) -> str:
    return f"http://{config.serve.host}:{config.serve.port}"


def _port() -> int:
    from deploy.processes import free_port

    return free_port()


# -- an hour of stream time through the Moderator directly ------------------------------------------------------
# The full pipeline on 2 cores screens ~1 stream second per wall second with OCR: an hour through it would take
# an hour. The same Moderator (RiskEngine, detectors, AlertLog, Redis snapshots) takes on-screen text directly
# here; nudenet is off for the hour (the pipeline test above runs it on every decoded frame).


class _Sink:
    def __init__(self):
        self.alerts, self.verify = [], []

    def publish(self, alerts):
        self.alerts.extend(alerts)


def _moderator(tmp_path: Path, redis_server) -> tuple[Moderator, _Sink]:
    book = rooms.policy_book()
    raw = json.loads(book.model_dump_json())
    raw["default"]["nudity"]["enabled"] = False
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"default": raw["default"]}))
    config = LivelensConfig(moderation=dict(enabled=True, policy_file=path), redis=dict(url=redis_server.address))
    client = redis.Redis.from_url(redis_server.address)
    sink = _Sink()
    return Moderator(config, client, AlertLog(client), sink.publish, sink.verify.append,
                     clock=lambda: rooms.EPOCH), sink


def _run(moderator: Moderator, frame_texts, stream: str) -> None:
    for frames, texts in rooms.text_batches(frame_texts, stream=stream):
        moderator.screen(frames, texts, embedding=_no_embedding)


def _no_embedding() -> np.ndarray:
    raise AssertionError("no prompts in this policy: embeddings are never fetched")


def test_an_hour_of_a_clean_room_raises_nothing_and_every_inserted_event_alerts(tmp_path, redis_server):
    moderator, sink = _moderator(tmp_path, redis_server)
    started = time.monotonic()
    _run(moderator, rooms.texts(3600, []), "clean")
    assert sink.alerts == [] and sink.verify == []
    assert moderator.counts["frames"] == 3600 and moderator.state("t1", "clean") == "GREEN"
    hour_s = time.monotonic() - started

    # Risky text every 2 minutes: RED terms (exact, misspelt, a payment handle) alert RED within 3 s, without
    # verification; a semantic phrase (at most YELLOW: a paraphrase is a guess) alerts YELLOW and asks for it.
    texts = {"BEST COCAINE IN TOWN": "RED", "c0caine delivery": "RED", "TIPS: paypal.me/dana": "RED",
             "PLEASE SEND MONEY TO ME": "YELLOW"}
    events = [rooms.Inserted(text, start, 4) for start, text in zip(range(30, 1200, 120), list(texts) * 3)]
    _run(moderator, rooms.texts(1200, events), "risky")
    opened = [a for a in sink.alerts if a.event == "alert"]
    assert len(opened) == len(events), [(a.pts_s, a.reason) for a in opened]
    for event, alert in zip(events, opened):
        assert alert.state == texts[event.text] and 0 <= alert.pts_s - event.start_s <= 3.0, (event, alert.reason)
        assert alert.evidence and all(event.start_s <= e.t_start < event.start_s + event.seconds
                                      for e in alert.evidence)
    assert [a.event for a in sink.alerts].count("resolve") == len(events)  # each episode closes
    yellow = sum(texts[e.text] == "YELLOW" for e in events)
    assert len({d.episode for d in sink.verify}) == yellow and all(d.state == "YELLOW" for d in sink.verify)
    assert hour_s < 60, f"an hour of stream time took {hour_s:.0f} s"


def test_room_state_survives_a_new_moderator(tmp_path, redis_server):
    """A restarted actor restores the room from Redis: the episode goes on, a replayed segment changes nothing."""
    moderator, sink = _moderator(tmp_path, redis_server)
    frame_texts = rooms.texts(20, [rooms.Inserted("BEST COCAINE IN TOWN", 4, 4)])
    batches = list(rooms.text_batches(frame_texts, stream="r"))
    for frames, texts in batches[:4]:
        moderator.screen(frames, texts, _no_embedding)
    assert [a.state for a in sink.alerts] == ["RED"]
    again, sink2 = _moderator(tmp_path, redis_server)
    frames, texts = batches[3]
    assert again.screen(frames, texts, _no_embedding) == []  # replayed: seen already
    assert again.state("t1", "r") == "RED"
    for frames, texts in batches[4:]:
        again.screen(frames, texts, _no_embedding)
    assert sink2.alerts == []  # still the same episode (RED latched inside the 30 s window): no second alert


def test_detector_failures_degrade_to_unknown_and_are_counted(tmp_path, redis_server):
    moderator, sink = _moderator(tmp_path, redis_server)
    frame_texts = rooms.texts(4, [rooms.Inserted("BEST COCAINE IN TOWN", 2, 2)])
    for frames, texts in rooms.text_batches(frame_texts, stream="r"):
        moderator.screen(frames, texts[:1], _no_embedding)  # one text for two frames: the lexicon raises
    health = moderator.health()["lexicon"]
    assert health["failures"] == 2 and "FrameText per frame" in health["last_error"]
    assert sink.alerts == [] and moderator.state("t1", "r") == "GREEN"
