"""Where livelens connects: the Kafka cluster (and its per-tenant topic names), Redis, Ray."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, SecretStr, model_validator

from operators.config import Section
from pipelines.secrets import split_url_credentials


# The topics that are per tenant with kafka.tenant_topics; tenant ids that may name them.
TENANT_TOPICS = ("segments", "queries", "answers", "alerts")
TENANT_TOPIC_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")


class KafkaConfig(Section):
    # Validation errors would otherwise quote the input: passwords and keys.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)
    bootstrap: str | None = Field(
        None,
        description="host:port list of the Kafka cluster. Env LIVELENS_KAFKA_BOOTSTRAP. "
        "Unset: `livelens up` starts a local broker and records its address.",
    )
    topic_prefix: str = "livelens."
    segments_topic: str = "video-segments"
    queries_topic: str = "queries"
    answers_topic: str = "answers"
    alerts_topic: str = "alerts"
    dead_letters_topic: str = "dead-letters"
    stream_control_topic: str = Field(
        "stream-control", description="Typed commands that pause, resume, delete, purge or configure a stream "
        "(contracts.messages.StreamCommand; docs/operations.md, Managing streams).")
    partitions: int = Field(8, ge=1, description="Partitions created for each topic that does not exist yet.")
    # Kafka's default message.max.bytes is 1,000,012; chunks stay below it with room for headers.
    max_message_bytes: int = Field(900_000, ge=10_000)
    ingest_group: str = "livelens-ingest"
    query_group: str = "livelens-queries"
    control_group: str = "livelens-stream-control"
    # kafka-python's defaults (10 s session, 3 s heartbeat) make a group join take ~23 s;
    # these make it ~3.5 s while still tolerating a GC pause or a slow poll.
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    max_poll_interval_ms: int = 120_000
    # Explicit deadlines on every broker call (pipelines/kafka/client.py): with the broker away a call fails in
    # bounded time and its caller waits and retries (pipelines/failures.py), instead of hanging.
    request_timeout_ms: int = Field(15_000, ge=1000, description="Deadline of one request to the broker (commits, "
                                    "metadata, produce); above session_timeout_ms.")
    ack_timeout_s: float = Field(30.0, gt=0, description="Seconds a producer may take to have a send acknowledged "
                                 "(answers, alerts, dead letters; flushes before a commit) before its caller treats "
                                 "the broker as away.")
    tenant_topics: bool = Field(
        False, description="Each tenant's segments, queries, answers and alerts on topics of its own, "
        "<topic_prefix>tenant.<tenant_id>.<topic>, so that broker ACLs on the prefix <topic_prefix>tenant.<tenant_id>. "
        "separate tenants on a shared cluster (docs/security.md). Consumers then take the tenant from the topic and "
        "dead-letter records claiming another (tenant_mismatch). Tenant ids are then [A-Za-z0-9_-] only. Dead "
        "letters stay on the shared topic (operators only).")
    topic_refresh_ms: int = Field(
        5000, ge=100, description="With tenant_topics: how often consumers look for new tenants' topics.")
    # Authentication and encryption (docs/security.md): passed to every producer, consumer and admin client
    # by pipelines.kafka.client.client_security().
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="PLAINTEXT only on a network nobody else can reach; SASL_SSL on a shared one.")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="Required with a SASL_* protocol. PLAIN sends the password itself: only over SSL.")
    sasl_username: str | None = None
    sasl_password: SecretStr | None = Field(None, description="Env LIVELENS_KAFKA__SASL_PASSWORD.")
    ssl_cafile: str | None = Field(None, description="CA bundle the broker's certificate is checked against.")
    ssl_certfile: str | None = Field(None, description="Client certificate (mutual TLS).")
    ssl_keyfile: str | None = None
    ssl_password: SecretStr | None = Field(None, description="Password of ssl_keyfile.")
    ssl_check_hostname: bool = True

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaConfig:
        if self.security_protocol.startswith("SASL_"):
            missing = [n for n in ("sasl_mechanism", "sasl_username", "sasl_password") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"security_protocol {self.security_protocol} needs {', '.join(missing)}")
        elif self.sasl_mechanism is not None:
            raise ValueError(f"sasl_mechanism is set but security_protocol is {self.security_protocol}")
        return self

    def topic(self, name: str, tenant_id: str | None = None) -> str:
        """The topic ``name`` (segments, queries, answers, alerts, dead_letters) of ``tenant_id``: with
        tenant_topics, a tenant's own (consumers read all of them: pipelines/kafka/tenancy.py)."""
        base = getattr(self, f"{name}_topic")
        if not self.tenant_topics or name not in TENANT_TOPICS:
            return self.topic_prefix + base
        if tenant_id is None:
            raise ValueError(f"kafka.tenant_topics is on: every tenant has its own {name} topic, name the tenant "
                             f"(its topic is {self.tenant_prefix('<tenant_id>')}{base})")
        return self.tenant_prefix(tenant_id) + base

    def tenant_prefix(self, tenant_id: str) -> str:
        """What every topic of the tenant starts with: the resource an ACL with a prefixed pattern names."""
        if tenant_id != "<tenant_id>" and not TENANT_TOPIC_ID.fullmatch(tenant_id):
            raise ValueError(f"tenant id {tenant_id!r} cannot name topics: with kafka.tenant_topics a tenant id is "
                             "[A-Za-z0-9_-]{1,100} (a dot would put one tenant's topics under another's ACL prefix)")
        return f"{self.topic_prefix}tenant.{tenant_id}."


class RedisConfig(Section):
    # Validation errors would otherwise quote the input: passwords and keys.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)
    url: str | None = Field(
        None, description="redis:// URL. Env LIVELENS_REDIS_URL. Unset: `livelens up` starts a local redis-server."
    )
    # `always` makes every acknowledged write survive a crash of redis-server, which is what lets
    # the source commit Kafka offsets right after a write returns. `everysec` can lose ~1 s.
    appendfsync: Literal["always", "everysec"] = "always"
    durability_check: Literal["refuse", "warn", "off"] = Field(
        "refuse", description="At start, read the server's persistence settings (CONFIG GET appendonly, "
        "appendfsync): when they are weaker than `appendfsync` asks, `refuse` stops the deployment, `warn` logs an "
        "error and goes on (an acknowledged write may then be lost in a crash of redis-server), `off` skips the check "
        "(e.g. a managed Redis that forbids CONFIG and is known to persist).")
    socket_timeout_s: float = Field(
        10.0, gt=0, description="Seconds a Redis command may take before it fails as a timeout (a black-holed or "
        "stopped server): the segment then waits and is retried, instead of a write hanging for ever.")
    connect_timeout_s: float = Field(5.0, gt=0, description="Seconds to open a connection to Redis.")
    # Credentials live here, never in `url`: a password given in the URL is moved here on load, so the URL
    # can be printed and logged (pipelines/redis_io.py builds every client from both).
    username: str | None = Field(None, description="Redis ACL user (Redis 6+); None: the default user.")
    password: SecretStr | None = Field(None, description="Env LIVELENS_REDIS__PASSWORD, or in the URL.")
    ssl_ca_certs: str | None = Field(None, description="CA bundle for a rediss:// (TLS) URL.")
    ssl_certfile: str | None = Field(None, description="Client certificate for mutual TLS.")
    ssl_keyfile: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _credentials_out_of_url(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("url"):
            return data
        url, username, password = split_url_credentials(str(data["url"]))
        if password is not None and data.get("password") is not None:
            raise ValueError("the Redis password is given both in redis.url and redis.password: give it once")
        out = dict(data, url=url)
        if password is not None:
            out["password"] = password
        if username and not data.get("username"):
            out["username"] = username
        return out


class RayConfig(Section):
    address: str | None = Field(None, description="Ray cluster address. Env RAY_ADDRESS. Unset: a local runtime.")
    namespace: str = "livelens"
    num_cpus: int | None = Field(None, description="CPUs of a local runtime (None: all).")
    auth_token_path: str | None = Field(
        None, description="File holding the cluster's auth token (Ray's RAY_AUTH_TOKEN_PATH). Unset: Ray's own lookup "
        "(RAY_AUTH_TOKEN, ~/.ray/auth_token); against the local stack, the token `livelens up` made.")
