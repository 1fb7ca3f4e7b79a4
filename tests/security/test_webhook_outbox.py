"""The webhook outbox against a real redis-server and a real local HTTP receiver: bounded, off the caller's
path, and durable: deliveries queued by an outbox whose process is killed mid-queue are delivered by
another, each at least once, with the same idempotency key."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import redis

from memory_store import keys
from pipelines.config import WebhookConfig
from pipelines.query.outbox import WebhookOutbox
from tests.security.test_webhooks import LOOPBACK, SECRET, _delivery

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _wait(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


def test_the_outbox_returns_at_once_and_reports_what_failed(receiver_factory, redis_server):
    slow, good = receiver_factory([200], delay_s=1.0), receiver_factory([200])
    failures: list[tuple[str, str]] = []
    config = LOOPBACK.model_copy(update={"outbox_size": 3, "workers": 2})
    outbox = WebhookOutbox(config, redis.Redis.from_url(redis_server.address),
                           lambda d, code, reason: failures.append((d.idempotency_key, code)))
    try:
        started = time.monotonic()
        accepted = [outbox.submit(_delivery(slow.url, f"slow-{i}")) for i in range(6)]
        assert time.monotonic() - started < 0.2  # the caller (the commit path) never waits for an endpoint
        # The bound counts deliveries waiting and in progress, so exactly the first three are taken.
        assert accepted == [True] * 3 + [False] * 3
        assert [key for key, code in failures if code == "webhook_outbox_full"] == ["slow-3", "slow-4", "slow-5"]
        _wait(lambda: outbox.pending() == 0, 15, "the slow deliveries")
        assert sorted(h["idempotency-key"] for h, _, _ in slow.requests) == ["slow-0", "slow-1", "slow-2"]
        outbox.submit(_delivery("http://10.0.0.8/", "internal"))
        _wait(lambda: ("internal", "webhook_refused") in failures, 15, "the refusal")
        outbox.submit(_delivery(good.url, "good"))
        _wait(lambda: good.requests, 15, "the good delivery")
        assert good.requests[0][0]["idempotency-key"] == "good"
        # Delivered and refused ones alike are acknowledged and gone. The receiver records a request before it
        # answers, and the outbox acknowledges once the answer is back: wait for that, do not race it.
        _wait(lambda: outbox.pending() == 0, 15, "the acknowledgements")
    finally:
        outbox.close()


# The outbox of a standing-query actor, in a process of its own, killed with SIGKILL once it is delivering.
_CHILD = """
import json, sys, time
import redis
from pipelines.config import WebhookConfig
from pipelines.query.outbox import WebhookOutbox
from pipelines.query.webhooks import Delivery
url, redis_url, options, n = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
outbox = WebhookOutbox(WebhookConfig(**options), redis.Redis.from_url(redis_url), lambda *failed: None)
for i in range(n):
    outbox.submit(Delivery(tenant_id="acme", query_id="q1", url=url, body=json.dumps({"alert_id": f"alert-{i}"}).encode(),
                           idempotency_key=f"alert-{i}"))
print("queued", flush=True)
time.sleep(600)
"""


def test_queued_deliveries_outlive_the_outbox_that_queued_them(receiver_factory, redis_server):
    receiver = receiver_factory([204], delay_s=0.3)
    options = dict(allow=["127.0.0.1/32"], signing_secrets={"acme": SECRET}, backoff_s=0.05, attempt_timeout_s=1,
                   deadline_s=2, reclaim_after_s=2.5, workers=1)
    n = 8
    child = subprocess.Popen([sys.executable, "-c", _CHILD, receiver.url, redis_server.address, json.dumps(options),
                              str(n)], cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline().strip() == b"queued"
        _wait(lambda: len(receiver.requests) >= 2, 20, "the first outbox to be delivering")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    client = redis.Redis.from_url(redis_server.address)
    left = client.xlen(keys.WEBHOOK_OUTBOX)
    in_progress = client.xpending(keys.WEBHOOK_OUTBOX, "webhook-deliverers")["pending"]
    assert left >= n - 3 and in_progress == 1, (left, in_progress)  # killed mid-queue, one delivery taken

    config = WebhookConfig(**(options | {"workers": 2}))
    outbox = WebhookOutbox(config, client, lambda *failed: None)
    try:
        wanted = {f"alert-{i}" for i in range(n)}
        _wait(lambda: {h["idempotency-key"] for h, _, _ in receiver.requests} >= wanted, 30, "every delivery")
        _wait(lambda: outbox.pending() == 0, 10, "the outbox to empty")
    finally:
        outbox.close()
    for headers, body, _ in receiver.requests:
        assert json.loads(body)["alert_id"] == headers["idempotency-key"]  # one key per alert, on every try
    resent = len(receiver.requests) - n
    assert 0 <= resent <= 1  # at most the one in progress when the first outbox died is sent twice
    print(f"{n} deliveries, killed after {n - left} left the outbox, {resent} sent twice")
