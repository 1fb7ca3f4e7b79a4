"""One frozen configuration tree for every livelens process.

Each floor keeps its own sections (operators/config.py, memory_store/config.py, the moderation policy in
operators/moderation/policy.py); this root composes them with the sections of the pipeline layer.

Sources, highest priority first:
1. keyword arguments (tests, `LivelensConfig(...)`),
2. environment variables: ``LIVELENS_<SECTION>__<FIELD>`` (for example
   ``LIVELENS_DECODE__SAMPLE_FPS=2``), plus the well-known short names
   ``LIVELENS_KAFKA_BOOTSTRAP``, ``LIVELENS_REDIS_URL`` and ``RAY_ADDRESS``,
3. a TOML file named by ``LIVELENS_CONFIG`` (default ``livelens.toml`` in the
   working directory, when it exists),
4. the profile's defaults (``offline``, ``gpu`` or ``cluster``), then the field defaults.

`livelens config` prints the tree in effect.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_serializer, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from memory_store.config import MemoryConfig
from operators.config import (
    AnswerConfig,
    BoundaryConfig,
    CacheConfig,
    CompressConfig,
    DecodeConfig,
    DropConfig,
    EncodeConfig,
    OcrConfig,
    PruneConfig,
    Section,
    SpeechConfig,
    TranscriptConfig,
)
from operators.moderation.policy import ModerationConfig
from pipelines.secrets import REDACTED, split_url_credentials

Profile = Literal["offline", "gpu", "cluster"]
ProcessingGuarantee = Literal["at-least-once"]


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


class MetricsConfig(Section):
    """How often the gauges that cost a request are refreshed (pipelines/metrics.py; counters are per event)."""

    lag_interval_s: float = Field(
        5.0, gt=0, description="Seconds between a source's end-offset requests for its consumer-lag gauges. Lower "
        "shows lag sooner, at one broker request per source per interval.")
    memory_interval_s: float = Field(
        10.0, gt=0, description="Seconds between a memory shard's stats readings (Redis counts per tenant) for its "
        "frames / tokens / bytes gauges.")
    max_stream_series: int = Field(
        2000, ge=0, description="Streams each process names in the `stream` label; later ones count under "
        "stream=\"_other\". Ray cannot remove a series, so this bounds them however many streams come and go.")


class PipelineConfig(Section):
    guarantee: ProcessingGuarantee = "at-least-once"
    sources: int = Field(1, ge=1, description="Kafka source actors in the ingest consumer group.")
    decoders: int = Field(2, ge=1)
    encoders: int = Field(1, ge=1)
    compressors: int = Field(1, ge=1, description="Compress actors; none are started with encode.fused (the encoders "
                             "compress).")
    ocr_readers: int = Field(1, ge=1, description="On-screen text actors (when ocr.enabled).")
    transcript_readers: int = Field(1, ge=1, description="Transcript actors: captions, subtitles, speech (when "
                                    "transcript.enabled).")
    standing_evaluators: int = Field(1, ge=1, description="Actors evaluating standing queries on new segments.")
    answerers: int = Field(1, ge=1)
    max_inflight_segments: int = Field(
        8, ge=1, description="Segments a source has in the DAG at once; past it, it pauses its partitions."
    )
    segment_attempts: int = Field(
        3, ge=1, description="Tries before a segment on which our code keeps crashing (an error that is neither bad "
        "input nor infrastructure away) is dead-lettered. Infrastructure failures (Redis, Kafka, a Ray actor) are "
        "retried without limit and never dead-lettered.")
    stream_idle_s: float = Field(
        900.0, gt=0, description="Seconds without a segment after which a live actor evicts a stream's state "
        "(compressor, boundaries, frame skip, ViT token cache, encoder stats, OCR, captions): the state is kept in "
        "Redis for evicted_state_ttl_s and restored if the stream returns (the ViT token cache and the encoder's "
        "stats are not kept: they restart).")
    evicted_state_ttl_s: float = Field(
        86400.0, ge=0, description="Seconds Redis keeps an evicted stream's operator state for its return; 0 keeps "
        "none (a returning stream starts afresh: its first frame kept whole, its event boundaries restarted). A "
        "stream's state is about 0.8 MB with a ViT-B/16 in feature mode (its last frame's tokens, twice with frame "
        "skip), tens of KB in pixel mode.")
    max_streams_per_actor: int = Field(
        1000, ge=1, description="Streams whose state one encode / compress / OCR actor keeps at most; past it the "
        "least recently seen is evicted (as above). With the ViT token cache on, each costs about 14.5 MB in the "
        "encoder.")
    chunk_idle_s: float = Field(
        60.0, gt=0, description="Seconds a half-reassembled chunked segment may go without its next chunk, while its "
        "partition is being read, before it is dead-lettered as incomplete (its publisher stopped mid-segment). Time "
        "the source holds the partition paused for backpressure does not count.")
    retry_initial_s: float = Field(0.5, gt=0, description="First wait before retrying a segment whose dependency "
                                   "is away; doubled on each failure up to retry_max_s.")
    retry_max_s: float = Field(10.0, gt=0, description="Longest wait between retries of a waiting segment (and "
                               "between reconnects of a loop whose broker is away).")


class StagePlacement(Section):
    """What each actor of one stage asks Ray for (pipelines/ray/placement.py turns it into actor options)."""

    num_cpus: float | None = Field(
        None, ge=0, description="CPUs each actor holds. None: Ray's actor default (1 CPU to be placed, none held "
        "while it runs), which lets a dozen actors share a 2-core laptop. On a cluster set it, so that the "
        "autoscaler sees the demand and adds nodes.")
    num_gpus: float | None = Field(
        None, ge=0, description="GPUs each actor holds. None: 1 for encode and answer when their device is cuda, "
        "else none. A fraction (0.5) packs two actors onto one GPU.")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources each actor asks for, e.g. "
        "{\"livelens_gpu_worker\": 0.01}: the actor is then placed only on nodes that declare them "
        "(ray_cluster.yaml, k8s/rayservice.yaml). The amount is a tag, not a budget: nodes declare 1000.")


class PlacementConfig(Section):
    """Ray resources per stage. The defaults ask for nothing custom, so one machine runs every stage; the
    `cluster` profile tags CPU stages for CPU worker nodes and encode / answer for GPU worker nodes."""

    source: StagePlacement = StagePlacement()
    decode: StagePlacement = StagePlacement()
    encode: StagePlacement = StagePlacement()
    compress: StagePlacement = StagePlacement()
    ocr: StagePlacement = StagePlacement()
    transcript: StagePlacement = StagePlacement()
    memory: StagePlacement = StagePlacement()
    standing: StagePlacement = StagePlacement()
    answer: StagePlacement = StagePlacement()
    query: StagePlacement = Field(StagePlacement(), description="The Kafka query consumer.")
    moderate: StagePlacement = Field(StagePlacement(), description="Moderation actors (when moderation.enabled).")
    verify: StagePlacement = Field(
        StagePlacement(), description="The moderation verifier; a VLM verifier runs the answer model on "
        "answer.device, so it gets a GPU like answer does.")


class DashboardConfig(Section):
    """The live ops overview (`GET /v1/overview`, the web dashboard, `livelens status`; pipelines/api/overview.py)."""

    stalled_after_s: float = Field(
        10.0, gt=0, description="A stream with no segment stored for this long is stalled. Segments are ~2 s, so "
        "a live stream stores one every 2 s plus jitter; lower flags hiccups, higher hides real stalls longer.")
    ended_after_s: float = Field(
        300.0, gt=0, description="A stalled stream with nothing waiting for it on its Kafka partition counts as "
        "ended after this long without a stored segment.")
    fps_window_s: float = Field(
        10.0, gt=0, description="Frames stored over the last this many seconds give a stream's fps. Longer is "
        "steadier (segments land in bursts of ~2 s of frames), shorter reacts faster.")
    alerts_scanned: int = Field(
        500, ge=1, description="Each stream's last alert is looked for among its tenant's newest this many alerts.")
    timeline_frames: int = Field(120, ge=1, le=10_000, description="Newest frames shown on a stream's page.")
    refresh_ms: int = Field(1500, ge=200, description="How often the web pages poll for fresh numbers.")


class QueryConfig(Section):
    """Query-time retrieval (pipelines/query/engine.py)."""

    now_window_s: float = Field(
        10.0, gt=0, description="Recency gate: a question about now (\"what is on screen right now\") searches only "
        "each stream's newest this many seconds of memory, counted from its newest stored frame, not the clock "
        "(a lagging stream still answers with its latest picture).")
    max_image_pixels: int = Field(
        4096 * 4096, ge=1, description="Example images (queries, standing queries): width * height above this is "
        "refused from the image header, before any pixel is decoded (JPEG, PNG and WebP only).")
    rerank_depth: int = Field(
        50, ge=1, le=1000, description="Example-image queries: coarse hits reranked by late interaction over the "
        "frames' stored tokens (operators/late_interaction.py). More finds more, each costs a token read.")
    rerank_weight: float = Field(
        0.5, ge=0.0, le=1.0, description="Share of the token score in a fully covered frame's blended score; 0 "
        "turns the rerank off.")


class ServeConfig(Section):
    # Validation errors would otherwise quote the input: passwords and keys.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)
    host: str = Field("127.0.0.1", description="Any address but loopback needs api_keys (checked at start).")
    port: int = 8765
    api_keys: dict[SecretStr, str] = Field(
        default_factory=dict,
        description="API key -> tenant id. When set, every HTTP call needs `Authorization: Bearer <key>` (or "
        "`X-API-Key`), and the key, not the request, decides the tenant. Env LIVELENS_SERVE__API_KEYS as JSON.")
    admin_api_key: SecretStr | None = Field(
        None, description="Key of the operator endpoints: the overview of every tenant and the actors' stats. "
        "Unset: they are served only with no api_keys on a loopback address.")
    answer_ttl_s: int = Field(3600, ge=60, description="How long answers to asynchronous queries are kept.")
    queries_per_s: float = Field(
        20.0, gt=0, description="Per tenant, over every replica: queries (sync and async) per second; more get 429.")
    burst_s: float = Field(
        2.0, gt=0, description="Rate window: a tenant may use queries_per_s * burst_s queries in any such window.")
    max_pending_queries: int = Field(
        32, ge=1, description="Per tenant: asynchronous queries waiting for an answer; more get 429.")
    max_standing_queries: int = Field(100, ge=1, description="Per tenant: registered standing queries; more get 429.")

    @field_validator("api_keys", "admin_api_key")
    @classmethod
    def _no_placeholder_keys(cls, value: Any) -> Any:
        from pipelines.secrets import check_not_placeholder

        keys = value if isinstance(value, dict) else [value] if value is not None else []
        for key in keys:
            check_not_placeholder(key.get_secret_value())
        return value

    @field_serializer("api_keys", when_used="json")
    def _redacted_keys(self, keys: dict[SecretStr, str]) -> dict[str, str]:
        # SecretStr keys would all print as the same mask and collapse; numbering keeps one line per key.
        return {f"{REDACTED}#{i}": tenant for i, (_, tenant) in enumerate(sorted(keys.items(), key=lambda kv: kv[1]))}

    def tenant_for_key(self, presented: str) -> str | None:
        """The tenant of an API key, or None. Compares against every key in constant time each (hmac), so
        the response time says nothing about how much of a key was right."""
        import hmac

        found = None
        for key, tenant in self.api_keys.items():
            if hmac.compare_digest(key.get_secret_value().encode(), presented.encode()):
                found = tenant
        return found

    def is_admin_key(self, presented: str) -> bool:
        import hmac

        return self.admin_api_key is not None and hmac.compare_digest(
            self.admin_api_key.get_secret_value().encode(), presented.encode())


class WebhookConfig(Section):
    # Validation errors would otherwise quote the input: passwords and keys.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)
    """Standing-query webhooks (pipelines/query/webhooks.py): where they may go and how they are delivered."""

    allow: tuple[str, ...] = Field(
        (), description="Hosts or networks (CIDR) a webhook may reach although they are loopback, private, "
        "link-local or otherwise internal, e.g. [\"10.1.2.0/24\", \"hooks.internal\"]. Public addresses need no entry.")
    signing_secrets: dict[str, SecretStr] = Field(
        default_factory=dict, description="Tenant id -> HMAC-SHA256 key of its webhooks' X-Livelens-Signature. "
        "A tenant without one cannot register webhooks. Env LIVELENS_WEBHOOKS__SIGNING_SECRETS as JSON.")
    deadline_s: float = Field(30.0, gt=0, description="Total time for one alert's delivery, retries included.")
    attempt_timeout_s: float = Field(5.0, gt=0, description="One attempt: connect, send and read the answer.")
    attempts: int = Field(5, ge=1, description="Tries per alert within deadline_s.")
    backoff_s: float = Field(0.5, gt=0, description="Wait before the 2nd try; doubles each time (jittered).")
    outbox_size: int = Field(
        1000, ge=1, description="Deliveries waiting or in progress in the outbox (a Redis stream shared by every "
        "standing-query actor). When full, new ones are dead-lettered (the alert itself is on the alerts topic "
        "and in GET /v1/alerts).")
    workers: int = Field(4, ge=1, description="Threads per standing-query actor delivering from the outbox, so one "
                         "slow endpoint does not hold up every tenant's deliveries.")
    reclaim_after_s: float = Field(
        60.0, gt=0, description="A delivery taken by a worker that died (its actor or node gone) is taken over by "
        "another worker after this long. Above deadline_s, which a live worker never holds one longer than.")

    @model_validator(mode="after")
    def _reclaim_after_the_deadline(self) -> WebhookConfig:
        if self.reclaim_after_s <= self.deadline_s:
            raise ValueError(f"webhooks.reclaim_after_s ({self.reclaim_after_s}) must exceed deadline_s "
                             f"({self.deadline_s}), or a slow delivery still in progress would be sent twice at once")
        return self


class BackfillConfig(Section):
    """`livelens backfill` and `livelens replay`: batch work beside live ingest (docs/operations.md)."""

    nice: int = Field(
        10, ge=0, le=19, description="CPU niceness of the backfill / replay process and its decode workers. Live "
        "actors run at 0, so where both compete for a core the kernel gives live ingest ~10x the CPU time "
        "(weights 1024 vs 110); an idle core still goes to the batch work. 0: no preference.")


class StreamsConfig(Section):
    """``streams.*``: managing streams (pause, resume, delete, purge; docs/operations.md)."""

    state_ttl_s: float = Field(
        1.0, gt=0, le=60, description="How long a source trusts the state it read for a stream before reading it "
        "again: a pause or delete reaches ingest within this.")
    purge_settle_s: float = Field(
        3.0, ge=0, description="A purge waits this long after stopping ingest (past state_ttl_s) before erasing, so "
        "segments already inside the DAG land first (a purge is idempotent: run it again if one took longer).")
    catch_up_workers: int = Field(1, ge=1, description="Decoder processes of a catch-up replay.")


class ClipConfig(Section):
    """``clips.*``: clip URLs on evidence and alerts, and the limits of one clip (docs/operations.md)."""

    margin_s: float = Field(
        2.0, ge=0, description="Evidence and alert clip URLs pad the evidence's span by this on each side, so the "
        "moment is seen with its lead-in.")
    max_span_s: float = Field(
        600.0, gt=0, description="Longest span one clip may cover. A clip is built in memory (its compressed "
        "video, ~1 MB per 10 s of 720p), so this bounds what one request holds.")
    read_timeout_s: float = Field(
        10.0, gt=0, description="A Kafka read that gets no record for this long answers 503 (retry later).")
    nice: int = Field(
        10, ge=0, le=19, description="CPU niceness of the threads that cut clips (`clip_threads`). Live actors run at "
        "0, so where a clip and ingest want the same core the kernel gives ingest ~10x the CPU time; 0: no "
        "preference.")
    locations_retention_s: float | None = Field(
        None, gt=0, description="How long (stream seconds) segment locations stay in Redis, ~0.7 kB per segment "
        "(1.3 MB per stream-hour of 2 s segments). None: max(memory.retention_s, archive.retention_s with an "
        "archive). Set it to the segments topic's retention.ms when that is shorter and there is no archive.")


class ArchiveConfig(Section):
    """``archive.*``: where segments are copied for clips older than Kafka's retention (docs/operations.md)."""

    url: str | None = Field(
        None, description="fsspec URL or local path of the archive; None: no archive, clips come from Kafka only.")
    retention_s: float = Field(
        30 * 86400.0, gt=0, description="Archived segments whose first frame is older than this (wall clock, "
        "against the stream's newest segment) are deleted; their clips then answer 410 once Kafka dropped them too.")
    storage_options: dict[str, str] = Field(
        default_factory=dict, description="Passed to the fsspec filesystem (credentials, endpoint_url, ...).")


class LivelensConfig(BaseSettings):
    """The whole configuration. Frozen: build a new one to change it."""

    model_config = SettingsConfigDict(
        frozen=True,
        env_prefix="LIVELENS_",
        env_nested_delimiter="__",
        extra="forbid",
        # Errors name the field and the rule, not the value given: sections hold keys and passwords.
        hide_input_in_errors=True,
    )

    profile: Profile = "offline"
    data_dir: Path = Field(Path(".livelens"), description="Where the local stack keeps its state. Env LIVELENS_DATA_DIR.")
    kafka: KafkaConfig = KafkaConfig()
    redis: RedisConfig = RedisConfig()
    ray: RayConfig = RayConfig()
    decode: DecodeConfig = DecodeConfig()
    encode: EncodeConfig = EncodeConfig()
    compress: CompressConfig = CompressConfig()
    memory: MemoryConfig = MemoryConfig()
    ocr: OcrConfig = OcrConfig()
    transcript: TranscriptConfig = TranscriptConfig()
    speech: SpeechConfig = Field(SpeechConfig(), description="The speech recogniser transcript.asr runs "
                                 "(operators/speech).")
    cache: CacheConfig = CacheConfig()
    drop: DropConfig = DropConfig()
    prune: PruneConfig | None = Field(None, description="Distinctive-token pruning to a per-frame budget; None: off.")
    boundaries: BoundaryConfig = BoundaryConfig()
    answer: AnswerConfig = AnswerConfig()
    pipeline: PipelineConfig = PipelineConfig()
    metrics: MetricsConfig = MetricsConfig()
    placement: PlacementConfig = PlacementConfig()
    query: QueryConfig = QueryConfig()
    serve: ServeConfig = ServeConfig()
    webhooks: WebhookConfig = WebhookConfig()
    backfill: BackfillConfig = BackfillConfig()
    dashboard: DashboardConfig = DashboardConfig()
    clips: ClipConfig = ClipConfig()
    streams: StreamsConfig = StreamsConfig()
    archive: ArchiveConfig = ArchiveConfig()
    moderation: ModerationConfig = Field(
        ModerationConfig(), description="Risk screening of every stream (pipelines/moderation/moderator.py). Off by default: "
        "it runs nudenet on every sampled frame.")

    @model_validator(mode="before")
    @classmethod
    def _apply_profile_and_short_env(cls, data: Any) -> Any:
        data = dict(data or {})
        profile = data.get("profile") or os.environ.get("LIVELENS_PROFILE", "offline")
        for section, values in PROFILE_DEFAULTS.get(profile, {}).items():
            data[section] = _merge(cls.model_fields[section].annotation, values, _as_dict(data.get(section)))
        for env_name, (section, field) in SHORT_ENV.items():
            if os.environ.get(env_name):
                merged = _as_dict(data.get(section))
                merged.setdefault(field, os.environ[env_name])
                data[section] = merged
        return data

    @model_validator(mode="after")
    def _asr_hears_audio(self) -> LivelensConfig:
        if self.transcript.enabled and self.transcript.asr:
            if not self.decode.audio:
                raise ValueError("transcript.asr recognises the decoded audio: set decode.audio too")
            if self.speech.engine == "none":
                raise ValueError("transcript.asr needs a speech engine: set speech.engine (pocketsphinx, whisper)")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get("LIVELENS_CONFIG", "livelens.toml"))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path.exists():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    @model_validator(mode="after")
    def _fused_encode_computes_every_frame(self) -> LivelensConfig:
        if self.encode.fused == "on" and (blockers := self._fused_encode_blockers()):
            raise ValueError(f"encode.fused 'on' runs every frame through the tower in full: turn off {blockers}, "
                             "or set encode.fused to 'auto' or 'off'")
        return self

    def _fused_encode_blockers(self) -> list[str]:
        return [name for name, on in (("cache.skip_frames", self.cache.skip_frames),
                                      ("cache.token_cache", self.cache.token_cache)) if on]

    @property
    def fused_encode(self) -> bool:
        """Whether encode and compress run as one step on the encoder's device (`encode.fused`)."""
        if self.encode.fused == "auto":
            return self.encode.device == "cuda" and not self._fused_encode_blockers()
        return self.encode.fused == "on"

    @property
    def tiny_models_dir(self) -> Path:
        return self.data_dir / "models"


def _merge(model: Any, defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """`given` over a profile's `defaults`, field by field down through nested sections, so that setting
    placement.encode.num_cpus keeps the profile's placement.encode.resources. Other values replace whole."""
    out = dict(defaults)
    for key, value in given.items():
        field = model.model_fields.get(key)
        section = field.annotation if field is not None else None
        if isinstance(section, type) and issubclass(section, BaseModel) and isinstance(out.get(key), dict):
            out[key] = _merge(section, out[key], _as_dict(value))
        else:
            out[key] = value
    return out


def _as_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_unset=True)
    return dict(value)


# Environment names people already use for these, honoured beside the LIVELENS_<SECTION>__ form.
SHORT_ENV: dict[str, tuple[str, str]] = {
    "LIVELENS_KAFKA_BOOTSTRAP": ("kafka", "bootstrap"),
    "LIVELENS_REDIS_URL": ("redis", "url"),
    "RAY_ADDRESS": ("ray", "address"),
}

# What a profile changes. offline: tiny random models built locally, CPU, float32.
# gpu: real Hugging Face checkpoints, bf16 on CUDA: a SigLIP dual encoder (text queries work) and a
# text LLM that answers from the evidence's times and scores. To feed stored visual tokens to the answer
# model instead, set encode.model and answer.model to the same VLM (docs/operations.md).
PROFILE_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "offline": {},
    "gpu": {
        "encode": {
            "model": "google/siglip-base-patch16-224",
            "device": "cuda",
            "dtype": "bfloat16",
            "batch_frames": 256,
            "max_batch_wait_ms": 30.0,
        },
        "answer": {"model": "Qwen/Qwen2.5-1.5B-Instruct", "device": "cuda", "dtype": "bfloat16"},
        "pipeline": {"decoders": 8, "encoders": 1, "sources": 2, "max_inflight_segments": 32},
    },
}
# cluster: the gpu profile's models, with every stage tagged for its node type (ray_cluster.yaml, k8s/) and
# holding the CPUs it uses, so that the autoscaler adds CPU workers for decode / OCR and GPU workers for
# encode / answer. Replica counts stay a per-deployment choice (docs/deploy.md sizes them).
_CPU_NODE = {"livelens_cpu_worker": 0.01}
_GPU_NODE = {"livelens_gpu_worker": 0.01}
PROFILE_DEFAULTS["cluster"] = {
    **PROFILE_DEFAULTS["gpu"],
    "placement": {
        "source": {"num_cpus": 0.5, "resources": _CPU_NODE},
        "decode": {"num_cpus": 1, "resources": _CPU_NODE},
        "compress": {"num_cpus": 0.5, "resources": _CPU_NODE},
        "ocr": {"num_cpus": 1, "resources": _CPU_NODE},
        "transcript": {"num_cpus": 0.5, "resources": _CPU_NODE},
        "memory": {"num_cpus": 1, "resources": _CPU_NODE},
        "standing": {"num_cpus": 0.5, "resources": _CPU_NODE},
        "query": {"num_cpus": 0.5, "resources": _CPU_NODE},
        "moderate": {"num_cpus": 1, "resources": _CPU_NODE},
        "verify": {"num_cpus": 1, "resources": _GPU_NODE},
        "encode": {"num_cpus": 2, "resources": _GPU_NODE},
        "answer": {"num_cpus": 1, "resources": _GPU_NODE},
    },
}
