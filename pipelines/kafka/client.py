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

from pipelines.settings.connections import TENANT_TOPICS, KafkaConfig
from pipelines.kafka.checksum import check_fast_checksum

log = logging.getLogger(__name__)

TOPIC_NAMES = ("segments", "queries", "answers", "alerts", "dead_letters", "stream_control")


class BrokerUnreachable(KafkaError):
    """The broker did not answer within a call's deadline. A KafkaError (and so a RuntimeError): the loops
    that consume treat it like any other broker failure, wait and try again."""


def require_bootstrap(config: KafkaConfig) -> str:
    if not config.bootstrap:
        raise RuntimeError(
            "no Kafka bootstrap address: set LIVELENS_KAFKA_BOOTSTRAP, or run `livelens up` to start a local broker"
        )
    return config.bootstrap


def client_security(config: KafkaConfig) -> dict:
    """The authentication and TLS options of every livelens Kafka client (producer, consumer, admin):
    one place, so that no client connects in plaintext to a broker that wants SASL or TLS."""
    options: dict = {"security_protocol": config.security_protocol}
    if config.security_protocol.startswith("SASL_"):
        options.update(sasl_mechanism=config.sasl_mechanism, sasl_plain_username=config.sasl_username,
                       sasl_plain_password=config.sasl_password.get_secret_value())
    if config.security_protocol in ("SSL", "SASL_SSL"):
        options.update(ssl_cafile=config.ssl_cafile, ssl_certfile=config.ssl_certfile,
                       ssl_keyfile=config.ssl_keyfile, ssl_check_hostname=config.ssl_check_hostname,
                       ssl_password=config.ssl_password.get_secret_value() if config.ssl_password else None)
    return options


def admin_client(config: KafkaConfig, **overrides) -> KafkaAdminClient:
    options = dict(bootstrap_servers=require_bootstrap(config), client_id="livelens-admin",
                   request_timeout_ms=min(10_000, config.request_timeout_ms), **client_security(config))
    options.update(overrides)
    return KafkaAdminClient(**options)


def topic_names(config: KafkaConfig, tenant_id: str | None = None) -> list[str]:
    """livelens's topics; with kafka.tenant_topics, the shared ones plus those of ``tenant_id`` when given."""
    per_tenant = config.tenant_topics
    return [config.topic(name, tenant_id) for name in TOPIC_NAMES
            if not (per_tenant and name in TENANT_TOPICS) or tenant_id is not None]


def ensure_topics(config: KafkaConfig, timeout_s: float = 30.0, *, tenant_id: str | None = None) -> list[str]:
    """Create livelens's topics (and ``tenant_id``'s own, with kafka.tenant_topics) that do not exist yet.
    Returns the names created."""
    wanted = topic_names(config, tenant_id)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin = admin_client(config)
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
                raise BrokerUnreachable(f"could not reach Kafka at {config.bootstrap} to create topics: {exc}") from exc
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
        # Bounded: a send fails (KafkaTimeoutError) once the broker has been away this long, and send() itself
        # blocks (metadata, a full buffer) no longer; the caller then waits and retries with a new producer.
        request_timeout_ms=config.request_timeout_ms,
        delivery_timeout_ms=int(config.ack_timeout_s * 1000),
        max_block_ms=int(config.ack_timeout_s * 1000),
        **client_security(config),
    )
    options.update(overrides)
    check_fast_checksum("producer")
    return KafkaProducer(**options)


def segment_fetch_options(config: KafkaConfig) -> dict:
    """Fetch sizes for topics of segment-sized records, for every consumer (group or assigned).

    Chosen from `benchmarks/kafka_io.py --consumer-sweep` (BENCHMARKS.md, "Kafka client I/O"): with the C
    checksum, a consumer spends the same CPU per MB (within the run-to-run spread) whichever fetch sizes, socket
    buffer or poll size it uses, so these are set for what they guarantee, not for speed:
    - per partition 4 records' worth: a 2 MB segment's chunks (3 records) come in one fetch, so a segment is
      reassembled in one poll (kafka-python's 1 MiB default fetches one chunk per round trip);
    - per fetch 16 records' worth (14.4 MB at the default limit): bounds a consumer's buffered memory, where
      kafka-python's default allows 50 MiB;
    - the socket receive buffer is left to the kernel: a fixed SO_RCVBUF turns Linux's autotuning off and
      measured no faster.
    """
    return dict(max_partition_fetch_bytes=config.max_message_bytes * 4, fetch_max_bytes=config.max_message_bytes * 16)


def make_reader(config: KafkaConfig, **overrides) -> KafkaConsumer:
    """A consumer without a group, for reading ranges by offset (replay, clips): it joins no group, so it
    never moves a group's partitions or commits, and a live consumer group does not notice it. The caller
    assigns partitions and seeks; fetches are sized to whole chunks, so its memory stays bounded."""
    options = dict(
        bootstrap_servers=require_bootstrap(config),
        group_id=None,
        enable_auto_commit=False,
        reconnect_backoff_max_ms=2000,
        request_timeout_ms=config.request_timeout_ms,
        **segment_fetch_options(config),
        **client_security(config),
    )
    options.update(overrides)
    check_fast_checksum("consumer")
    return KafkaConsumer(**options)


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
        reconnect_backoff_max_ms=2000,
        request_timeout_ms=config.request_timeout_ms,
        **segment_fetch_options(config),
        **client_security(config),
    )
    options.update(overrides)
    check_fast_checksum("consumer")
    consumer = KafkaConsumer(**options)
    if topics:
        consumer.subscribe(topics)
    return consumer
