"""Tenant isolation, adversarially: three tenants with their own keys, the same stream id and the same
video (and a private stream each); random queries, timelines, thumbnails, clips of evidence, alerts, acks,
standing queries, async queries and overviews over HTTP, and queries over each tenant's own Kafka topics
(kafka.tenant_topics), each also tried with another tenant's ids. No response may carry another tenant's
data: no 2xx body names another tenant, another's clip is a 404, each tenant's answers and alerts topics hold
only its own, and a record on a tenant's topic claiming another tenant is a dead letter. Every webhook reaches
only its own tenant's receiver, signed with its secret."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from datetime import UTC, datetime

import httpx
import pytest
import ray
from kafka import KafkaConsumer

from contracts import messages
from pipelines.api.client import Client
from pipelines.cli.demo import frame_at
from pipelines.cli.sample_video import write_sample_video
from pipelines.kafka.client import make_producer
from pipelines.kafka.publish import SegmentPublisher, new_session_id, segment_header
from pipelines.segmenter import iter_segments
from tests.integration.conftest import _free_port, wait_for
from tests.integration.test_pipeline import stored_segments

pytestmark = pytest.mark.integration

TENANTS = ["tenant-red", "tenant-blue", "tenant-green"]
KEYS = {t: f"key-{t}-{hashlib.sha256(t.encode()).hexdigest()[:16]}" for t in TENANTS}
SECRETS = {t: f"hook-{t}-{hashlib.sha256(t[::-1].encode()).hexdigest()[:16]}" for t in TENANTS}
ADMIN = "admin-" + hashlib.sha256(b"admin").hexdigest()[:20]
STREAM = "cam"  # every tenant's stream has the same id: only the tenant tells them apart


class HookReceiver:
    def __init__(self):
        self.received: list[tuple[dict, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _read_topic(config, topic: str, model) -> list:
    consumer = KafkaConsumer(topic, bootstrap_servers=config.kafka.bootstrap, auto_offset_reset="earliest",
                             group_id=None, consumer_timeout_ms=3000)
    try:
        return [messages.decode(record.value, expect=model)[0] for record in consumer]
    finally:
        consumer.close()


def _forge_segment(config, clip, *, on_topic_of: str, claiming: str) -> tuple[str, int]:
    """A segment on ``on_topic_of``'s segments topic whose header claims ``claiming``'s stream: its session and
    how many records (chunks) it took."""
    media = next(iter(iter_segments(str(clip))))
    forged = segment_header(media, stream_id=STREAM, tenant_id=claiming, start=datetime.now(UTC),
                            session=new_session_id())
    producer = make_producer(config.kafka)
    chunks = list(messages.chunk_segment(forged, media.payload, config.kafka.max_message_bytes))
    for header, chunk in chunks:
        value, headers = messages.segment_record(header, chunk)
        producer.send(config.kafka.topic("segments", on_topic_of), key=STREAM.encode(), value=value,
                      headers=headers).get(30)
    producer.close()
    return forged.session, len(chunks)


def _signed_by(headers: dict, body: bytes, secret: str) -> bool:
    fields = dict(part.split("=", 1) for part in headers["x-livelens-signature"].split(","))
    expected = hmac.new(secret.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(fields["v1"], expected)


@pytest.mark.timeout(900)  # three tenants through the whole pipeline on a shared 2-core machine: ~5 min
def test_no_response_carries_another_tenants_data(deployed, real_video_dir, tmp_path):
    clip = real_video_dir / "friday.mp4"
    receivers = {t: HookReceiver() for t in TENANTS}
    config = deployed(http=True, serve={"port": _free_port(), "api_keys": {key: t for t, key in KEYS.items()},
                                        "admin_api_key": ADMIN,
                                        "queries_per_s": 1000},
                      webhooks={"allow": ["127.0.0.1/32"], "signing_secrets": SECRETS},
                      kafka={"tenant_topics": True, "topic_refresh_ms": 1000})
    kafka_client = Client(config, timeout_s=60)
    base = f"http://{config.serve.host}:{config.serve.port}"
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    image = frame_at(clip, 2.0)

    def call(tenant: str, method: str, path: str, **kwargs) -> httpx.Response:
        return httpx.request(method, f"{base}{path}", headers={"authorization": f"Bearer {KEYS[tenant]}"},
                             timeout=60, **kwargs)

    # Webhooks to internal addresses (not allow-listed) are refused at registration.
    for url in ("http://169.254.169.254/latest/meta-data/", "http://[::1]:6379/",
                "http://10.0.0.8/hook"):
        refused = call("tenant-red", "POST", "/v1/standing-queries", json={"text": "x", "webhook": url})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "webhook_refused", refused.text
    # Standing queries before the video, so that they fire on it; min_score -1 fires on the first frame.
    standing = {}
    for tenant in TENANTS:
        created = call(tenant, "POST", "/v1/standing-queries",
                       json={"image_jpeg_b64": image, "min_score": -1, "webhook": receivers[tenant].url})
        assert created.status_code == 201, created.text
        standing[tenant] = created.json()["query_id"]
    publisher = SegmentPublisher(kafka=config.kafka)
    desks = {}  # a private stream per tenant, each a different video: their clips must stay apart
    for i, tenant in enumerate(TENANTS):
        publisher.publish(str(clip), stream_id=STREAM, tenant_id=tenant, pace="fast")
        desks[tenant] = tmp_path / f"{tenant}-desk.mp4"
        write_sample_video(desks[tenant], duration_s=4.0, fps=5, size=(320, 180), seed=i)
        publisher.publish(str(desks[tenant]), stream_id=f"{tenant}-desk", tenant_id=tenant, pace="fast")
    # Whoever may write red's segments topic claims blue's stream: a dead letter filed under red.
    forged_session, forged_records = _forge_segment(config, clip, on_topic_of="tenant-red", claiming="tenant-blue")
    n = sum(1 for _ in iter_segments(str(clip)))
    n_desk = sum(1 for _ in iter_segments(str(desks[TENANTS[0]])))
    wanted = {(t, stream): count for t in TENANTS for stream, count in ((STREAM, n), (f"{t}-desk", n_desk))}
    stored = lambda: {key: stored_segments(config, key[1], key[0]) for key in wanted}  # noqa: E731
    try:
        wait_for(lambda: stored() == wanted, 360, "every tenant's streams")
    except AssertionError as exc:
        sources = [ray.get(ray.get_actor(f"source-{i}", namespace=config.ray.namespace).stats.remote())
                   for i in range(config.pipeline.sources)]
        seen = [{k: v for k, v in s.items() if k != "latencies_s"} for s in sources]
        raise AssertionError(f"{exc}: stored {stored()} of {wanted}; sources {seen}") from None
    wait_for(lambda: all(call(t, "GET", "/v1/alerts").json() for t in TENANTS), 60, "every tenant's alert")

    # What each tenant legitimately owns, to be tried by the others.
    owned: dict[str, dict[str, list[str]]] = {}
    for tenant in TENANTS:
        frames = call(tenant, "GET", f"/v1/streams/{STREAM}/timeline").json()
        alerts = call(tenant, "GET", "/v1/alerts").json()
        assert frames and alerts
        desk = call(tenant, "POST", "/v1/query", json={"text": "what happened", "stream_ids": [f"{tenant}-desk"]})
        assert desk.status_code == 200, desk.text
        clips = [e["clip_url"] for e in desk.json()["evidence"]]
        assert clips and all(url.startswith(f"/v1/streams/{tenant}-desk/clip?") for url in clips)
        owned[tenant] = {"thumbnails": [f["thumbnail"] for f in frames], "alerts": [a["alert_id"] for a in alerts],
                         "standing": [standing[tenant]], "async": [], "clips": clips, "kafka": [], "forged": []}

    def leak(tenant: str, response: httpx.Response) -> list[str]:
        others = [t for t in TENANTS if t != tenant]
        return [t for t in others if t in response.text]

    def own_or_other(tenant: str) -> tuple[str, bool]:
        target = rng.choice(TENANTS)
        return target, target == tenant

    checked = 0
    for step in range(120):
        tenant = rng.choice(TENANTS)
        target, own = own_or_other(tenant)
        op = rng.choice(["query", "async", "poll", "streams", "timeline", "thumbnail", "alerts", "ack",
                         "standing-list", "standing-delete", "overview", "stream-overview", "audit", "clip",
                         "clip-named", "kafka-query", "kafka-forged"])
        if op in ("kafka-query", "kafka-forged"):
            # Over the tenant's own queries topic: answered on its own answers topic, or (claiming another
            # tenant) never answered and dead-lettered.
            text = rng.choice(["what happened", "what is on screen", ""])
            if op == "kafka-query" or own:
                answer = kafka_client.ask_kafka(messages.Query(tenant_id=tenant, text=text, top_k=10))
                assert answer.tenant_id == tenant and not answer.error, answer
                assert all(e.frame_key.startswith(f"{tenant}/") for e in answer.evidence)
                assert all(e.stream_id in (STREAM, f"{tenant}-desk") for e in answer.evidence)
                owned[tenant]["kafka"].append(answer.query_id)
                owned[tenant]["clips"] += [e.clip_url for e in answer.evidence if e.clip_url]
            else:
                forged = messages.Query(tenant_id=target, text=text)
                producer = make_producer(config.kafka)
                producer.send(config.kafka.topic("queries", tenant), key=target.encode(),
                              value=messages.encode(forged)).get(30)
                producer.close()
                owned[tenant]["forged"].append(forged.query_id)
            checked += 1
            continue
        if op == "clip":
            url = rng.choice(owned[target]["clips"])
            if not own and url.startswith(f"/v1/streams/{STREAM}/"):
                continue  # every tenant has a stream of that name: the caller gets its own (tried below)
            response = call(tenant, "GET", url)
            assert response.status_code == (200 if own else 404), (url, response.text[:200])
            if own:
                assert response.content[4:8] == b"ftyp"  # an MP4
        elif op == "clip-named":
            response = call(tenant, "GET", f"/v1/streams/{STREAM}/clip",
                            params={"tenant_id": target, "from": "0", "to": "4"})
            assert response.status_code == (200 if own else 403), response.text[:200]
        elif op == "query":
            body = rng.choice([{"text": "what happened"}, {"image_jpeg_b64": image, "top_k": 10}, {}])
            body |= rng.choice([{}, {"tenant_id": target}, {"stream_ids": [STREAM]}])
            response = call(tenant, "POST", "/v1/query", json=body)
            if body.get("tenant_id", tenant) != tenant:
                assert response.status_code == 403
            else:
                assert response.status_code == 200, response.text
                evidence = response.json()["evidence"]
                assert all(e["frame_key"].startswith(f"{tenant}/") for e in evidence)
                owned[tenant]["thumbnails"] += [e["thumbnail"] for e in evidence if e.get("thumbnail")]
        elif op == "async":
            response = call(tenant, "POST", "/v1/queries", json={"text": "what happened"})
            assert response.status_code == 202, response.text
            owned[tenant]["async"].append(response.json()["query_id"])
        elif op == "poll" and owned[target]["async"]:
            query_id = rng.choice(owned[target]["async"])
            response = call(tenant, "GET", f"/v1/queries/{query_id}")
            assert response.status_code in ((200, 202) if own else (404,)), (op, own, response.text)
        elif op == "streams":
            response = call(tenant, "GET", "/v1/streams", params={"tenant_id": target})
            assert response.status_code == (200 if own else 403)
        elif op == "timeline":
            response = call(tenant, "GET", f"/v1/streams/{STREAM}/timeline", params={"tenant_id": target})
            assert response.status_code == (200 if own else 403)
        elif op == "thumbnail" and owned[target]["thumbnails"]:
            key = rng.choice(owned[target]["thumbnails"])
            response = call(tenant, "GET", f"/v1/thumbnails/{key}")
            assert response.status_code == (200 if own else 404)
            if own:
                assert response.content[:2] == b"\xff\xd8"
        elif op == "alerts":
            response = call(tenant, "GET", "/v1/alerts", params={"tenant_id": target, "room_id": STREAM})
            assert response.status_code == (200 if own else 403)
        elif op == "ack":
            alert_id = rng.choice(owned[target]["alerts"])
            response = call(tenant, "POST", f"/v1/alerts/{alert_id}/ack", json={"by": f"reviewer-{tenant}"})
            assert response.status_code == (200 if own else 404), response.text
        elif op == "standing-list":
            response = call(tenant, "GET", "/v1/standing-queries")
            assert response.status_code == 200
            assert {q["query_id"] for q in response.json()} <= set(owned[tenant]["standing"])
        elif op == "standing-delete" and not own:
            response = call(tenant, "DELETE", f"/v1/standing-queries/{standing[target]}")
            assert response.status_code == 404
        elif op == "overview":
            params = {"tenant_id": target} if rng.random() < .5 else {}
            response = call(tenant, "GET", "/v1/overview", params=params)
            assert response.status_code == (200 if own or not params else 403), response.text
            if response.status_code == 200:
                report = response.json()
                assert {s["tenant_id"] for s in report["streams"]} == {tenant} and report["actors"] == {}
        elif op == "stream-overview":
            response = call(tenant, "GET", f"/v1/overview/streams/{STREAM}", params={"tenant_id": target})
            assert response.status_code == (200 if own else 403)
        elif op == "audit":
            response = call(tenant, "GET", f"/v1/rooms/{STREAM}/audit", params={"tenant_id": target})
            assert response.status_code == (200 if own else 403)
        else:
            continue
        checked += 1
        if 200 <= response.status_code < 300:
            assert not leak(tenant, response), (f"seed {seed} step {step}: {op} by {tenant} shows "
                                               f"{leak(tenant, response)}: {response.text[:300]}")
    assert checked >= 60, f"seed {seed}: only {checked} requests made"

    # Kafka: each tenant's topics hold only its own answers and alerts; forged queries got no answer anywhere;
    # every record claiming another tenant on a tenant's topic is a dead letter filed under the topic's tenant.
    forged = {q: t for t in TENANTS for q in owned[t]["forged"]}
    for tenant in TENANTS:
        answers = _read_topic(config, config.kafka.topic("answers", tenant), messages.Answer)
        assert {a.tenant_id for a in answers} <= {tenant}, f"seed {seed}: another tenant's answer on {tenant}'s topic"
        assert set(owned[tenant]["kafka"]) <= {a.query_id for a in answers}
        assert not forged.keys() & {a.query_id for a in answers}, f"seed {seed}: a forged query was answered"
        alerts = _read_topic(config, config.kafka.topic("alerts", tenant), messages.Alert)
        assert alerts and {a.tenant_id for a in alerts} == {tenant}
    letters = [d for d in _read_topic(config, config.kafka.topic("dead_letters"), messages.DeadLetter)
               if d.code == "tenant_mismatch"]
    expected = {("tenant-red", config.kafka.topic("segments", "tenant-red"))} | {
        (t, config.kafka.topic("queries", t)) for t in forged.values()}
    assert {(d.tenant_id, d.source_topic) for d in letters} == expected, f"seed {seed}: {letters}"
    assert len(letters) == len(forged) + forged_records  # one per record
    assert stored_segments(config, STREAM, "tenant-blue") == n  # the forged segment was never stored
    assert forged_session not in call("tenant-blue", "GET", f"/v1/streams/{STREAM}/timeline").text

    # Operators see every tenant (and the actors); tenants' keys do not open the operator view.
    admin = httpx.get(f"{base}/v1/overview", headers={"x-api-key": ADMIN}, timeout=60).json()
    assert {s["tenant_id"] for s in admin["streams"]} == set(TENANTS) and admin["actors"]
    # Webhooks: each tenant's receiver heard only its own tenant's alerts, signed with its own secret.
    wait_for(lambda: all(r.received for r in receivers.values()), 30, "a webhook per tenant")
    for tenant, receiver in receivers.items():
        for headers, body in receiver.received:
            alert = json.loads(body)
            assert alert["tenant_id"] == tenant and alert["query_id"] == standing[tenant]
            assert _signed_by(headers, body, SECRETS[tenant])
            assert not any(_signed_by(headers, body, SECRETS[t]) for t in TENANTS if t != tenant)
            assert headers["idempotency-key"] == alert["alert_id"]
