"""Webhooks: SSRF targets refused after resolution; delivery to a real local HTTP server (allow-listed
loopback), signed, retried with one idempotency key, within a deadline. The outbox: test_webhook_outbox.py."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest

from pipelines.config import WebhookConfig
from pipelines.query.webhooks import (
    Delivery,
    DeliveryFailed,
    WebhookRefused,
    check_destination,
    deliver,
)

SECRET = "wh-Tg7Rf4Ea6Yu2"
OPEN = WebhookConfig()


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://127.0.0.1:6379/",  # redis
    "http://127.0.0.1:8265/api/jobs/",  # the Ray dashboard
    "http://localhost:8765/v1/overview",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://0.0.0.0:6379/",
    "http://10.0.0.8/",
    "http://172.16.3.4/",
    "http://192.168.1.1/admin",
    "http://100.64.0.1/",  # carrier-grade NAT, shared address space
    "http://2130706433/",  # 127.0.0.1 as one decimal number
    "http://0x7f.1/",  # and in hex shorthand
    "ftp://example.com/",
    "file:///etc/passwd",
    "http://user:pw@93.184.215.14/",
    "http://93.184.215.14:99999/",
])
def test_ssrf_targets_are_refused(url):
    with pytest.raises(WebhookRefused):
        check_destination(url, OPEN)


def test_a_public_address_is_allowed():
    assert check_destination("https://93.184.215.14/hook?x=1", OPEN).path == "/hook?x=1"


def test_a_name_is_checked_on_what_it_resolves_to():
    answers = {"hooks.example.com": ["93.184.215.14", "10.0.0.5"]}  # one internal answer is enough
    with pytest.raises(WebhookRefused, match="internal"):
        check_destination("https://hooks.example.com/x", OPEN, resolve=lambda host, port: answers[host])


@pytest.mark.parametrize("allow, url, allowed", [
    (("127.0.0.0/8",), "http://127.0.0.1:9000/", True),
    (("10.1.2.0/24",), "http://10.1.2.3/", True),
    (("10.1.2.0/24",), "http://10.1.3.3/", False),
    (("localhost",), "http://localhost:9000/", True),
    (("169.254.0.0/16",), "http://169.254.169.254/", False),  # metadata: never, even allow-listed
    (("0.0.0.0/0",), "http://169.254.169.254/", False),
])
def test_the_allow_list(allow, url, allowed):
    config = WebhookConfig(allow=allow)
    if allowed:
        check_destination(url, config)
    else:
        with pytest.raises(WebhookRefused):
            check_destination(url, config)


LOOPBACK = WebhookConfig(allow=("127.0.0.1/32",), backoff_s=0.05, attempt_timeout_s=2, deadline_s=5,
                         signing_secrets={"acme": SECRET})


def _delivery(url: str, key: str = "alert-1", tenant_id: str = "acme") -> Delivery:
    return Delivery(tenant_id=tenant_id, query_id="q1", url=url, body=f'{{"alert_id": "{key}"}}'.encode(),
                    idempotency_key=key)


def test_a_delivery_is_signed_and_carries_its_idempotency_key(receiver_factory):
    receiver = receiver_factory([204])
    assert deliver(_delivery(receiver.url), LOOPBACK) == 1
    headers, body, path = receiver.requests[0]
    assert path == "/hook" and headers["idempotency-key"] == "alert-1"
    fields = dict(part.split("=", 1) for part in headers["x-livelens-signature"].split(","))
    expected = hmac.new(SECRET.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected)
    assert abs(int(fields["t"]) - time.time()) < 60


def test_a_name_connects_to_the_address_it_was_checked_at(receiver_factory):
    """The connection goes to the checked address; the Host header stays the URL's name."""
    receiver = receiver_factory([200])
    port = receiver.server.server_port
    config = LOOPBACK.model_copy(update={"allow": ("hooks.example.com",)})
    deliver(_delivery(f"http://hooks.example.com:{port}/hook"), config, resolve=lambda host, p: ["127.0.0.1"])
    assert receiver.requests[0][0]["host"] == f"hooks.example.com:{port}"


def test_server_errors_are_retried_with_the_same_key(receiver_factory):
    receiver = receiver_factory([500, 503, 200])
    assert deliver(_delivery(receiver.url), LOOPBACK) == 3
    assert {h["idempotency-key"] for h, _, _ in receiver.requests} == {"alert-1"}


def test_a_client_error_is_not_retried(receiver_factory):
    receiver = receiver_factory([400])
    with pytest.raises(DeliveryFailed, match="HTTP 400"):
        deliver(_delivery(receiver.url), LOOPBACK)
    assert len(receiver.requests) == 1


def test_a_slow_endpoint_is_given_up_on_at_the_deadline(receiver_factory):
    receiver = receiver_factory([200], delay_s=3.0)
    config = LOOPBACK.model_copy(update={"attempt_timeout_s": 0.5, "deadline_s": 1.5, "attempts": 10})
    started = time.monotonic()
    with pytest.raises(DeliveryFailed, match="timed out|TimeoutError"):
        deliver(_delivery(receiver.url), config)
    assert time.monotonic() - started < 2.5


def test_an_internal_target_is_refused_at_delivery_too():
    with pytest.raises(DeliveryFailed) as raised:
        deliver(_delivery("http://169.254.169.254/latest/meta-data/"), LOOPBACK)
    assert raised.value.code == "webhook_refused" and not raised.value.retryable


def test_a_tenant_without_a_signing_secret_gets_no_unsigned_webhook(receiver_factory):
    """The secret is looked up when the delivery is sent (none is queued with it): no secret, no POST."""
    receiver = receiver_factory([204])
    with pytest.raises(DeliveryFailed) as raised:
        deliver(_delivery(receiver.url, tenant_id="globex"), LOOPBACK)
    assert raised.value.code == "webhook_unsigned" and not raised.value.retryable and not receiver.requests
