"""Who may call the HTTP API, for which tenant, and how much (docs/security.md).

- Exposure: an API on a non-loopback address without API keys would serve any tenant to anyone who can
  reach it, so it is refused at start (`check_exposure`).
- Keys: the key decides the tenant, compared in constant time (ServeConfig.tenant_for_key); operator
  endpoints (every tenant's overview, the actors' stats) want the admin key.
- Quotas, per tenant and over every replica (counters in Redis): queries per second, asynchronous
  queries pending, standing queries registered. Over a quota: 429 with Retry-After.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
import uuid

import redis
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers

from memory_store import keys
from pipelines.config import ServeConfig
from pipelines.query.engine import QueryError

log = logging.getLogger(__name__)


class ExposureError(RuntimeError):
    """The HTTP API would be reachable from other machines with nothing deciding who may do what."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to anything


def check_exposure(serve: ServeConfig, host: str | None = None) -> None:
    """Refuse to serve on a non-loopback ``host`` (default: serve.host) without API keys."""
    host = serve.host if host is None else host
    if not serve.api_keys and not is_loopback(host):
        raise ExposureError(
            f"refusing to serve the HTTP API on {host} without API keys: anyone who can reach it could read and "
            "write every tenant's data. Set LIVELENS_SERVE__API_KEYS (docs/security.md) or bind to 127.0.0.1.")


def presented_key(headers: Headers) -> str:
    auth = headers.get("authorization", "")
    return headers.get("x-api-key") or (auth[7:].strip() if auth.lower().startswith("bearer ") else "")


def resolve_tenant(serve: ServeConfig, headers: Headers, asked: str) -> str:
    """The tenant a call acts for: the API key's when keys are configured, else the one asked for."""
    if not serve.api_keys:
        return asked
    tenant = serve.tenant_for_key(presented_key(headers))
    if tenant is None:
        raise QueryError("unauthorized", "a valid API key is required (Authorization: Bearer <key>)", 401)
    if asked not in ("default", tenant):
        raise QueryError("forbidden", f"this key is not for tenant {asked}", 403)
    return tenant


def is_operator(serve: ServeConfig, headers: Headers) -> bool:
    """The admin key; without one configured, an open loopback API (no tenant keys) treats its one user as
    the operator, as it serves everything to them anyway."""
    if serve.admin_api_key is None:
        return not serve.api_keys
    return serve.is_admin_key(presented_key(headers))



def log_internal(exc: Exception) -> str:
    """Log the exception under a new error id, the only thing the caller is told: exception text may name
    hosts, keys or other tenants' data."""
    error_id = uuid.uuid4().hex[:16]
    log.error("internal error %s", error_id, exc_info=exc)
    return error_id


def internal_error(exc: Exception) -> JSONResponse:
    error_id = log_internal(exc)
    return JSONResponse(status_code=500, content={"error": {
        "code": "internal", "message": f"internal error; quote error id {error_id} to the operator",
        "error_id": error_id}})


class TenantQuotas:
    """Per-tenant limits shared by every replica: fixed-window query counts and a set of pending async
    queries in Redis. Keys use the tenant's hash tag, so they live with its other keys in a cluster."""

    def __init__(self, serve: ServeConfig, client: redis.Redis, clock=time.time):
        self.serve = serve
        self.client = client
        self.clock = clock

    def admit_query(self, tenant_id: str) -> None:
        window = self.serve.burst_s
        allowed = max(1, math.floor(self.serve.queries_per_s * window))
        slot = math.floor(self.clock() / window)
        key = keys.quota_queries(tenant_id, slot)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, math.ceil(window) + 1)
            used, _ = pipe.execute()
        if used > allowed:
            retry = (slot + 1) * window - self.clock()
            raise QuotaExceeded(f"over {self.serve.queries_per_s:g} queries per second for this tenant", retry)

    def start_pending(self, tenant_id: str, query_id: str, ttl_s: float) -> None:
        """Count an asynchronous query until `finish_pending` (or ``ttl_s``, if its worker died)."""
        key, now = self._pending_key(tenant_id), self.clock()
        with self.client.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zcard(key)
            _, pending = pipe.execute()
        if pending >= self.serve.max_pending_queries:
            raise QuotaExceeded(f"{pending} asynchronous queries of this tenant are still pending "
                                f"(max_pending_queries={self.serve.max_pending_queries})", 1.0)
        self.client.zadd(key, {query_id: now + ttl_s})
        self.client.expire(key, math.ceil(ttl_s))

    def finish_pending(self, tenant_id: str, query_id: str) -> None:
        self.client.zrem(self._pending_key(tenant_id), query_id)

    def admit_standing(self, registered: int) -> None:
        if registered >= self.serve.max_standing_queries:
            raise QuotaExceeded(f"this tenant has {registered} standing queries "
                                f"(max_standing_queries={self.serve.max_standing_queries}); delete some first", None)

    @staticmethod
    def _pending_key(tenant_id: str) -> str:
        return keys.quota_pending(tenant_id)


class QuotaExceeded(QueryError):
    def __init__(self, message: str, retry_after_s: float | None):
        super().__init__("quota_exceeded", message, 429)
        self.retry_after_s = retry_after_s
