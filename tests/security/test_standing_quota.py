"""The standing-query quota is checked and taken in one Redis step: creators racing against a real
redis-server (each thread with its own connection, as API replicas would be) never pass it together."""

from __future__ import annotations

import threading

import pytest
import redis

from memory_store import keys
from pipelines.query.standing import StandingQuery, StandingQuotaFull, StandingRegistry

LIMIT = 5
CREATORS = 24


def _query(tenant_id: str) -> StandingQuery:
    return StandingQuery(tenant_id=tenant_id, text="storm warning", text_vector=[0.0] * 8)


def test_racing_creators_never_pass_the_quota(redis_server):
    start = threading.Barrier(CREATORS)
    outcomes: list[str] = []

    def create(tenant_id: str) -> None:
        registry = StandingRegistry(redis.Redis.from_url(redis_server.address))
        start.wait()
        try:
            registry.register(_query(tenant_id), limit=LIMIT)
            outcomes.append(f"{tenant_id}:created")
        except StandingQuotaFull as exc:
            assert exc.registered == LIMIT
            outcomes.append(f"{tenant_id}:refused")

    # Two tenants race at once: each has its own quota.
    threads = [threading.Thread(target=create, args=(("acme", "globex")[i % 2],)) for i in range(CREATORS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    client = redis.Redis.from_url(redis_server.address)
    for tenant in ("acme", "globex"):
        assert outcomes.count(f"{tenant}:created") == LIMIT
        assert outcomes.count(f"{tenant}:refused") == CREATORS // 2 - LIMIT
        assert client.hlen(keys.standing(tenant)) == LIMIT
        assert len(StandingRegistry(client).list(tenant)) == LIMIT


def test_a_deleted_query_makes_room_and_no_limit_means_none(redis_server):
    registry = StandingRegistry(redis.Redis.from_url(redis_server.address))
    first = registry.register(_query("acme"), limit=1)
    with pytest.raises(StandingQuotaFull):
        registry.register(_query("acme"), limit=1)
    version = registry.version("acme")
    assert registry.delete("acme", first.query_id)
    registry.register(_query("acme"), limit=1)
    assert registry.version("acme") == version + 2  # evaluators re-read the registry after each change
    for _ in range(3):
        registry.register(_query("acme"))
    assert len(registry.list("acme")) == 4
