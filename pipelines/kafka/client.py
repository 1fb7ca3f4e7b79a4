"""Kafka clients configured one way for every livelens process.

Only the Kafka protocol is assumed: the local stack's broker (tansu) keeps topics
in memory, so a broker restart loses them and every client must be able to
recreate its topics and carry on; production clusters keep them.
"""

from __future__ import annotations

import logging
import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from pipelines.config import KafkaConfig

log = logging.getLogger(__name__)

TOPIC_NAMES = ("segments", "queries", "answers", "alerts", "dead_letters")


def require_bootstrap(config: KafkaConfig) -> str:
    if not config.bootstrap:
        raise RuntimeError(
            "no Kafka bootstrap address: set LIVELENS_KAFKA_BOOTSTRAP, or run `livelens up` to start a local broker"
        )
    return config.bootstrap


def ensure_topics(config: KafkaConfig, timeout_s: float = 30.0) -> list[str]:
    """Create livelens's topics that do not exist yet. Returns the names created."""
    wanted = [config.topic(name) for name in TOPIC_NAMES]
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = KafkaAdminClient(bootstrap_servers=require_bootstrap(config), client_id="livelens-admin",
                                     request_timeout_ms=10_000)
            try:
                missing = [t for t in wanted if t not in set(admin.list_topics())]
                if missing:
                    try:
                        admin.create_topics([NewTopic(t, config.partitions, 1) for t in missing])
                    except TopicAlreadyExistsError:
                        pass  # another process won the race; the topic is there, which is all we need
                    log.info("created topics %s", missing)
                return missing
            finally:
                admin.close()
        except KafkaError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not reach Kafka at {config.bootstrap} to create topics: {exc}") from exc
            time.sleep(0.5)


def make_producer(config: KafkaConfig, **overrides) -> KafkaProducer:
    """acks=all, idempotent producer: a retried send is not written twice, order per key is kept."""
    options = dict(
        bootstrap_servers=require_bootstrap(config),
        acks="all",
        enable_idempotence=True,
        # The limit is on our chunks (max_message_bytes), not a smaller client default.
        max_request_size=config.max_message_bytes + 64 * 1024,
        linger_ms=5,
        retries=2**31 - 1,
        reconnect_backoff_max_ms=2000,
    )
    options.update(overrides)
    return KafkaProducer(**options)


def make_consumer(config: KafkaConfig, group_id: str, topics: list[str], **overrides) -> KafkaConsumer:
    """Manual commits only: offsets move after what they produced is durable, never on a timer."""
    options = dict(
        bootstrap_servers=require_bootstrap(config),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=config.session_timeout_ms,
        heartbeat_interval_ms=config.heartbeat_interval_ms,
        max_poll_interval_ms=config.max_poll_interval_ms,
        max_partition_fetch_bytes=config.max_message_bytes * 4,
        fetch_max_bytes=config.max_message_bytes * 16,
        reconnect_backoff_max_ms=2000,
    )
    options.update(overrides)
    consumer = KafkaConsumer(**options)
    consumer.subscribe(topics)
    return consumer
