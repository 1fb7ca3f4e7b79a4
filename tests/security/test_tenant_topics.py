"""Per-tenant Kafka topics (kafka.tenant_topics): the naming scheme ACL prefixes rely on, and the live source
against the real broker taking the tenant from the topic: a segment claiming another tenant on tenant A's
topic is a dead letter filed under A, never stored for the tenant it claims. The query consumer and the
answers topics: tests/integration/test_isolation.py."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
import redis
from kafka import KafkaConsumer

from contracts import messages
from pipelines.clips import ClipKeeper
from pipelines.config import KafkaConfig, LivelensConfig
from pipelines.ingest.source import KafkaSegmentSource
from pipelines.kafka import tenancy
from pipelines.kafka.client import ensure_topics, make_producer, topic_names
from pipelines.kafka.publish import SegmentPublisher, new_session_id, segment_header
from pipelines.segmenter import iter_segments
from tests.reliability.inprocess import InProcessDag

TENANT_TOPICS = KafkaConfig(tenant_topics=True)


def test_each_tenant_has_its_own_topics_under_its_own_prefix():
    k = TENANT_TOPICS
    assert k.topic("segments", "acme") == "livelens.tenant.acme.video-segments"
    assert k.topic("answers", "acme").startswith(k.tenant_prefix("acme"))
    assert k.topic("dead_letters") == "livelens.dead-letters"  # operators' topic, shared
    with pytest.raises(ValueError, match="name the tenant"):
        k.topic("queries")
    # A dot would put tenant "acme.eu"'s topics under tenant "acme"'s ACL prefix; a colon is no topic name.
    for bad in ("acme.eu", "acme:eu", "", "x" * 101):
        with pytest.raises(ValueError, match="cannot name topics"):
            k.topic("alerts", bad)
    assert KafkaConfig().topic("queries", "acme") == "livelens.queries"  # off: shared topics, as before
    # Shared, for operators: dead letters, and stream control (commands name their tenant; ACLs keep tenants off it).
    assert topic_names(k) == ["livelens.dead-letters", "livelens.stream-control"]
    assert len(topic_names(k, "acme")) == 6


def test_the_topic_not_the_record_says_whose_a_record_is():
    k = TENANT_TOPICS
    assert tenancy.tenant_of(k, "queries", "livelens.tenant.a_b-9.queries") == "a_b-9"
    for other in ("livelens.queries", "livelens.tenant.acme.answers", "livelens.tenant.acme.queries.x",
                  "other.tenant.acme.queries", "livelens.tenant..queries", "livelens.tenant.a.b.queries"):
        assert tenancy.tenant_of(k, "queries", other) is None, other  # no tenant's: never read, never trusted
    assert tenancy.tenant_of(k, "queries", "livelens.tenant.acme.queries") == "acme"
    assert tenancy.refusal(k, "queries", "livelens.tenant.acme.queries", "acme") is None
    refused = tenancy.refusal(k, "queries", "livelens.tenant.acme.queries", "globex")
    assert refused.owner == "acme" and "claims tenant globex" in refused.reason
    assert "not a tenant's" in tenancy.refusal(k, "queries", "livelens.queries", "acme").reason
    assert tenancy.refusal(KafkaConfig(), "queries", "livelens.queries", "anyone") is None


class RecordingBackend(InProcessDag):
    """The in-process ingest backend (tests/reliability/inprocess.py), recording every submitted segment's info."""

    def __init__(self):
        super().__init__()
        self.infos = []

    def submit(self, info, payload, *, after=()):
        self.infos.append(info)
        return super().submit(info, payload, after=after)


def test_the_tenants_the_config_names_get_their_topics_at_deploy(kafka_broker):
    from kafka import KafkaAdminClient

    from pipelines.api.deployment import provision_known_tenants

    tag = f"p{int(time.time() * 1000) % 10**8}."
    kafka = dict(bootstrap=kafka_broker.address, topic_prefix=tag, partitions=1)
    keys = {"key-acme-0123456789abcdef": "acme", "key-globex-0123456789abcd": "globex"}
    config = LivelensConfig(kafka=dict(kafka, tenant_topics=True), serve=dict(api_keys=keys),
                            webhooks=dict(signing_secrets={"initech": "hook-initech-0123456789"}))
    # Consumers started now join once with all three tenants' topics, instead of a rebalance per tenant.
    created = provision_known_tenants(config)
    assert set(created) == {config.kafka.topic(name, tenant) for tenant in ("acme", "globex", "initech")
                            for name in tenancy.TENANT_TOPICS} | set(topic_names(config.kafka))
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.address)
    try:
        assert set(created) <= set(admin.list_topics())
    finally:
        admin.close()
    assert provision_known_tenants(config) == []  # there already
    assert provision_known_tenants(LivelensConfig(kafka=kafka, serve=dict(api_keys=keys))) == []  # shared topics


def test_a_segment_claiming_another_tenant_on_a_tenants_topic_is_dead_lettered(
        kafka_broker, redis_server, tmp_path):
    from pipelines.cli.sample_video import write_sample_video

    video = tmp_path / "cam.mp4"
    write_sample_video(video, duration_s=4.0, fps=5, size=(320, 180))
    tag = f"t{int(time.time() * 1000) % 10**8}."
    config = LivelensConfig(data_dir=tmp_path / "data", redis=dict(url=redis_server.address),
                            kafka=dict(bootstrap=kafka_broker.address, topic_prefix=tag, partitions=2,
                                       tenant_topics=True, topic_refresh_ms=500, ingest_group=f"{tag}ingest"))
    k = config.kafka
    # The source starts before any tenant has a topic, as a deployed pipeline does: it finds them by pattern.
    backend = RecordingBackend()
    source = KafkaSegmentSource(config, backend)
    stop = threading.Event()
    runner = threading.Thread(target=source.run, args=(stop,), daemon=True)
    runner.start()
    publisher = SegmentPublisher(kafka=k)
    n = publisher.publish(str(video), stream_id="cam", tenant_id="acme", pace="fast").segments
    publisher.publish(str(video), stream_id="cam", tenant_id="globex", pace="fast")
    # Whoever may write acme's topic claims globex's stream: the forged segment must not reach globex's memory.
    media = next(iter(iter_segments(str(video))))
    forged = segment_header(media, stream_id="cam", tenant_id="globex", start=datetime.now(UTC),
                            session=new_session_id())
    producer = make_producer(k)
    for header, chunk in messages.chunk_segment(forged, media.payload, k.max_message_bytes):
        value, headers = messages.segment_record(header, chunk)
        producer.send(k.topic("segments", "acme"), key=b"cam", value=value, headers=headers).get(30)
    producer.close()
    try:
        deadline = time.monotonic() + 60
        while (len(backend.infos) < 2 * n or not source.stats.dead_letters) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        runner.join(timeout=60)
    by_topic = {(i.tenant_id, i.topic) for i in backend.infos}
    assert by_topic == {("acme", k.topic("segments", "acme")), ("globex", k.topic("segments", "globex"))}
    assert len(backend.infos) == 2 * n and forged.session not in {i.session for i in backend.infos}
    assert source.stats.dead_letters == {tenancy.TENANT_MISMATCH: 1}

    ensure_topics(k)
    consumer = KafkaConsumer(k.topic("dead_letters"), bootstrap_servers=k.bootstrap, auto_offset_reset="earliest",
                             group_id=None, consumer_timeout_ms=3000)  # the source waited for its ack
    letters = [messages.decode(r.value, expect=messages.DeadLetter)[0] for r in consumer]
    consumer.close()
    assert [(d.code, d.tenant_id, d.source_topic) for d in letters] == [
        (tenancy.TENANT_MISMATCH, "acme", k.topic("segments", "acme"))]
    assert "claims tenant globex" in letters[0].reason
    # Rebuilding the clip ledger from what the topics retain keeps every tenant's segments, not the forged one.
    assert ClipKeeper(config, redis.Redis.from_url(redis_server.address)).keep_retained() == 2 * n
