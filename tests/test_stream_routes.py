"""The /v1/streams routes without Ray: FastAPI's test client over a StreamControl on an in-process memory
store and a real redis-server. Who may manage which tenant's streams, and the routes in the OpenAPI schema."""

from __future__ import annotations

import pytest
import redis
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from memory_store.service import MemoryStore
from pipelines.api import streams
from pipelines.config import LivelensConfig
from pipelines.query.engine import QueryError
from pipelines.streams.control import StreamControl
from tests.memory_store.batches import make_batch

KEYS = {"key-acme-0123456789abcdef": "acme", "key-globex-0123456789abcdef": "globex"}
ADMIN = "admin-0123456789abcdef0123"


@pytest.fixture
def http(redis_server) -> TestClient:
    config = LivelensConfig(redis={"url": redis_server.address}, serve={"api_keys": KEYS, "admin_api_key": ADMIN})
    client = redis.Redis.from_url(redis_server.address)
    store = MemoryStore(client, config.memory)
    for tenant in ("acme", "globex"):
        store.write(make_batch(tenant=tenant, stream="cam", seq=0))
    app = FastAPI()
    app.include_router(streams.router)
    app.add_exception_handler(QueryError, _refused)
    app.state.config = config
    app.state.stream_control = StreamControl(config, client, store, sleep=lambda s: None)
    return TestClient(app)


async def _refused(_, exc: QueryError) -> JSONResponse:
    """The API's error shape (pipelines/api/http.py), without importing Ray Serve."""
    return JSONResponse(status_code=exc.status, content={"error": {"code": exc.code, "message": exc.message}})


def _as(key: str) -> dict:
    return {"authorization": f"Bearer {key}"}


def test_a_key_manages_its_own_tenants_streams_and_the_admin_key_any(http):
    acme, globex = _as("key-acme-0123456789abcdef"), _as("key-globex-0123456789abcdef")
    assert http.post("/v1/streams/cam/pause", headers=acme).json()["state"] == "paused"
    assert http.get("/v1/streams/cam", headers=globex).json()["state"] == "live"  # globex's own cam
    assert http.post("/v1/streams/cam/resume", headers=globex, params={"tenant_id": "acme"}).status_code == 403
    assert http.post("/v1/streams/cam/pause").status_code == 401
    assert http.get("/v1/streams/nope", headers=acme).status_code == 404
    # The operator reaches any tenant.
    resumed = http.post("/v1/streams/cam/resume", headers=_as(ADMIN), params={"tenant_id": "acme"})
    assert resumed.status_code == 200 and resumed.json()["state"] == "live"
    # Settings: only the fields given change; null clears; a bad value is a 422.
    changed = http.patch("/v1/streams/cam", headers=acme, json={"sample_fps": 0.5}).json()["stream"]
    assert (changed["sampling"], changed["retention"]) == ("stream", "global")
    assert http.patch("/v1/streams/cam", headers=acme, json={"sample_fps": None}).json()["stream"]["sampling"] == \
        "global"
    assert http.patch("/v1/streams/cam", headers=acme, json={"retention_s": -1}).status_code == 422
    assert http.patch("/v1/streams/cam", headers=acme, json={}).status_code == 422
    # catch-up only for a paused stream; a purge leaves it listed nowhere, its audit kept.
    assert http.post("/v1/streams/cam/resume", headers=acme, params={"catch_up": "true"}).status_code == 200
    assert http.delete("/v1/streams/cam", headers=acme, params={"purge": "true"}).json()["state"] == "purged"
    assert http.get("/v1/streams", headers=acme).json() == []
    assert [e["action"] for e in http.get("/v1/streams/cam/audit", headers=acme).json()] == [
        "purge", "set", "set", "resume", "pause"]
    assert http.get("/v1/streams", headers=globex).json()[0]["frames"] == 2


def test_the_stream_routes_are_in_the_openapi_schema(http):
    paths = http.get("/openapi.json").json()["paths"]
    assert set(paths["/v1/streams/{stream_id}"]) == {"get", "delete", "patch"}
    for action in ("pause", "resume"):
        assert "post" in paths[f"/v1/streams/{{stream_id}}/{action}"]
    assert "get" in paths["/v1/streams"] and "get" in paths["/v1/streams/{stream_id}/audit"]
