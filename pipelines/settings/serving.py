"""What livelens serves: the HTTP API and its keys, queries, standing-query webhooks, the dashboard."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, SecretStr, field_serializer, field_validator, model_validator

from operators.config import Section
from pipelines.secrets import REDACTED


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
