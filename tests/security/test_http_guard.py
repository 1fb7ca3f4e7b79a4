"""The HTTP API's guards: exposure, keys, operator endpoints, body size, 500s, per-tenant quotas."""

from __future__ import annotations

import hmac
import logging
from pathlib import Path

import pytest
import redis
import yaml
from fastapi.testclient import TestClient
from starlette.datastructures import Headers

from pipelines.config import LivelensConfig, ServeConfig
from pipelines.api.guard import (
    ExposureError,
    QuotaExceeded,
    TenantQuotas,
    check_exposure,
    is_operator,
    resolve_tenant,
)
from pipelines.query.engine import QueryError

REPO = Path(__file__).resolve().parents[2]
KEY_A, KEY_B, ADMIN = "ka-7Gq2rXw9Lm4Tz8Vb", "kb-Qe3Np6Hs1Jd5Wc0Y", "adm-Zr8Kf2Lx6Pv1Mt4N"
KEYS = {KEY_A: "acme", KEY_B: "globex"}


@pytest.mark.parametrize("host, keys, refused", [
    ("0.0.0.0", {}, True),
    ("10.1.2.3", {}, True),
    ("::", {}, True),
    ("livelens.internal", {}, True),
    ("127.0.0.1", {}, False),
    ("127.3.4.5", {}, False),
    ("::1", {}, False),
    ("localhost", {}, False),
    ("0.0.0.0", KEYS, False),
])
def test_a_non_loopback_bind_without_keys_is_refused(host, keys, refused):
    serve = ServeConfig(host=host, api_keys=keys)
    if refused:
        with pytest.raises(ExposureError, match="without API keys"):
            check_exposure(serve)
    else:
        check_exposure(serve)


def test_start_http_refuses_an_open_bind_before_starting_anything():
    from pipelines.api.http import start_http

    with pytest.raises(ExposureError):
        start_http(LivelensConfig(serve={"host": "0.0.0.0"}))


def _shipped_api_keys() -> str:
    secret = next(d for d in yaml.safe_load_all((REPO / "k8s" / "secrets.yaml").read_text())
                  if d and d["kind"] == "Secret")
    return secret["stringData"]["api-keys"]


@pytest.mark.parametrize("keys", [
    {"change-me": "default"},
    {"replace-with-a-long-random-key": "default"},
    {"  ChangeMe ": "acme"},
    {"": "acme"},
    {KEY_A: "acme", "secret": "globex"},
])
def test_placeholder_api_keys_are_refused(keys):
    with pytest.raises(ValueError, match="placeholder|empty"):
        ServeConfig(api_keys=keys)


def test_the_shipped_example_secret_does_not_start_a_server(monkeypatch):
    monkeypatch.setenv("LIVELENS_SERVE__API_KEYS", _shipped_api_keys())
    with pytest.raises(ValueError, match="placeholder"):
        LivelensConfig()


def test_placeholder_admin_key_is_refused():
    with pytest.raises(ValueError, match="placeholder"):
        ServeConfig(api_keys=KEYS, admin_api_key="changeme")


def _headers(**values: str) -> Headers:
    return Headers({k.replace("_", "-"): v for k, v in values.items()})


@pytest.mark.parametrize("headers, asked, expected", [
    ({}, "default", 401),
    ({"authorization": "Bearer nope"}, "default", 401),
    ({"authorization": f"Bearer {KEY_A[:-1]}"}, "default", 401),  # a prefix of a key is no key
    ({"authorization": f"Bearer {KEY_A}"}, "default", "acme"),
    ({"authorization": f"bearer  {KEY_A}"}, "acme", "acme"),
    ({"x_api_key": KEY_B}, "default", "globex"),
    ({"x_api_key": KEY_B}, "acme", 403),
    ({"x_api_key": ADMIN}, "default", 401),  # the admin key is no tenant's key
])
def test_the_key_decides_the_tenant(headers, asked, expected):
    serve = ServeConfig(api_keys=KEYS, admin_api_key=ADMIN)
    if isinstance(expected, int):
        with pytest.raises(QueryError) as raised:
            resolve_tenant(serve, _headers(**headers), asked)
        assert raised.value.status == expected
    else:
        assert resolve_tenant(serve, _headers(**headers), asked) == expected


def test_keys_are_compared_in_constant_time_against_every_key(monkeypatch):
    """Every configured key is compared with hmac.compare_digest, also after a match: no early exit."""
    compared, compare = [], hmac.compare_digest

    def spy(a, b):
        compared.append(a)
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    serve = ServeConfig(api_keys=KEYS)
    assert serve.tenant_for_key(KEY_A) == "acme"
    assert sorted(compared) == sorted(k.encode() for k in KEYS)


@pytest.mark.parametrize("serve, headers, allowed", [
    (ServeConfig(), {}, True),  # an open loopback API: its one user is the operator
    (ServeConfig(api_keys=KEYS), {"x_api_key": KEY_A}, False),  # tenant keys, no admin key configured
    (ServeConfig(api_keys=KEYS, admin_api_key=ADMIN), {"x_api_key": KEY_A}, False),
    (ServeConfig(api_keys=KEYS, admin_api_key=ADMIN), {}, False),
    (ServeConfig(api_keys=KEYS, admin_api_key=ADMIN), {"authorization": f"Bearer {ADMIN}"}, True),
])
def test_operator_endpoints_want_the_admin_key(serve, headers, allowed):
    assert is_operator(serve, _headers(**headers)) == allowed


@pytest.fixture(scope="module")
def http() -> TestClient:
    """The API's own FastAPI app without Serve: middleware and error handlers run; a route that gets past
    them fails (no Serve replica), which is what the 500 test needs."""
    from pipelines.api.http import api

    return TestClient(api, raise_server_exceptions=False)


def test_a_chunked_body_is_cut_off_at_the_limit(http):
    from pipelines.api.http import MAX_BODY_BYTES

    sent = 0

    def chunks():
        nonlocal sent
        for _ in range(2 * MAX_BODY_BYTES // (64 << 10)):
            sent += 64 << 10
            yield b" " * (64 << 10)

    response = http.post("/v1/query", content=chunks(), headers={"content-type": "application/json"})
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


def test_a_declared_oversize_body_is_refused(http):
    response = http.post("/v1/query", content=b"{}", headers={"content-type": "application/json",
                                                               "content-length": str(9 << 20)})
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"


def test_a_500_says_an_error_id_and_logs_the_details(http, caplog):
    with caplog.at_level(logging.ERROR, logger="pipelines.api.guard"):
        response = http.post("/v1/query", json={"text": "anything"})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "internal" and error["error_id"] in error["message"]
    assert "Exception" not in error["message"] and "serve" not in error["message"].lower()
    logged = [r for r in caplog.records if error["error_id"] in r.getMessage()]
    assert logged and logged[0].exc_info is not None


@pytest.fixture
def quotas(redis_server) -> TenantQuotas:
    serve = ServeConfig(queries_per_s=2, burst_s=2, max_pending_queries=2, max_standing_queries=3)
    now = [1000.0]
    quotas = TenantQuotas(serve, redis.Redis.from_url(redis_server.address), clock=lambda: now[0])
    quotas.now = now
    return quotas


def test_queries_over_the_rate_get_429_per_tenant(quotas):
    for _ in range(4):  # 2 per second over a 2 s window
        quotas.admit_query("acme")
    with pytest.raises(QuotaExceeded) as raised:
        quotas.admit_query("acme")
    assert raised.value.status == 429 and 0 < raised.value.retry_after_s <= 2
    quotas.admit_query("globex")  # another tenant's budget is its own
    quotas.now[0] += 2.0
    quotas.admit_query("acme")  # the next window


def test_pending_async_queries_are_bounded_and_released(quotas):
    quotas.start_pending("acme", "q1", 60)
    quotas.start_pending("acme", "q2", 60)
    with pytest.raises(QuotaExceeded):
        quotas.start_pending("acme", "q3", 60)
    quotas.finish_pending("acme", "q1")
    quotas.start_pending("acme", "q3", 60)
    quotas.now[0] += 61  # a worker that died: its entries expire
    quotas.start_pending("acme", "q4", 60)


def test_standing_queries_are_bounded(quotas):
    quotas.admit_standing(2)
    with pytest.raises(QuotaExceeded) as raised:
        quotas.admit_standing(3)
    assert raised.value.status == 429


def test_livelens_up_refuses_an_open_bind_before_starting_the_stack(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from pipelines.cli.main import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIVELENS_DATA_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LIVELENS_SERVE__HOST", "0.0.0.0")
    result = CliRunner().invoke(app, ["up"])
    assert result.exit_code == 2 and "without API keys" in result.output
    assert not (tmp_path / "state").exists()  # nothing was started
