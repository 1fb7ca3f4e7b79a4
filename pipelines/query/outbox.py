"""The webhook outbox: standing-query deliveries in a Redis stream, drained by worker threads.

Durable and bounded, so that neither a slow endpoint nor a dying actor costs an alert its webhook:

- `submit` appends a delivery to one Redis stream (``keys.WEBHOOK_OUTBOX``) unless it already holds
  ``webhooks.outbox_size`` deliveries, in one Lua step (the check and the append cannot be split by another
  actor's append); the caller (the standing-query actor, on the commit path) never waits for an endpoint.
- Workers of every standing-query actor read it as one consumer group. A delivery is acknowledged (and
  deleted) only once it was delivered or dead-lettered, so one taken by a worker whose actor died stays
  pending and is claimed by another worker after ``webhooks.reclaim_after_s``: at-least-once, with the same
  ``Idempotency-Key`` (the alert id) on every attempt, for the receiver to de-duplicate.
- No signing secret is stored: the tenant's is looked up when the delivery is sent.

Redis trouble in `submit` raises (the segment is retried, like any infrastructure failure); in a worker it
is waited out.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable

import redis

from memory_store import keys
from pipelines.config import WebhookConfig
from pipelines.query.webhooks import Delivery, DeliveryFailed, deliver

log = logging.getLogger(__name__)

GROUP = "webhook-deliverers"
_FIELDS = ("tenant_id", "query_id", "url", "idempotency_key", "stream_id")

# KEYS[1] the outbox, ARGV[1] its bound, ARGV[2..] field, value pairs: the entry id, or false when full.
_APPEND = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
"""


class WebhookOutbox:
    """``on_failure(delivery, code, reason)`` hears of every delivery that did not succeed, from a worker thread
    (or from `submit`, when the outbox is full); the delivery is acknowledged once it returns."""

    def __init__(self, config: WebhookConfig, client: redis.Redis, on_failure: Callable[[Delivery, str, str], None],
                 *, resolve: Callable[[str, int], list[str]] | None = None):
        self.config = config
        self.client = client
        self.on_failure = on_failure
        self._resolve = resolve
        self._append = client.register_script(_APPEND)
        # A consumer name per outbox object: a dead one's pending deliveries are claimed by idle time.
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.delivered = 0
        self.failed = 0
        self._stop = threading.Event()
        try:
            client.xgroup_create(keys.WEBHOOK_OUTBOX, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._workers = [threading.Thread(target=self._work, name=f"webhook-{i}", daemon=True)
                         for i in range(config.workers)]
        for worker in self._workers:
            worker.start()

    def submit(self, delivery: Delivery) -> bool:
        """Queue a delivery without waiting for its endpoint; False (and on_failure) when the outbox is full."""
        fields = [value for name in _FIELDS for value in (name, getattr(delivery, name))] + ["body", delivery.body]
        if self._append(keys=[keys.WEBHOOK_OUTBOX], args=[self.config.outbox_size, *fields]) is None:
            self._failed(delivery, "webhook_outbox_full",
                         f"{self.config.outbox_size} deliveries already waiting (webhooks.outbox_size)")
            return False
        return True

    def pending(self) -> int:
        """Deliveries waiting or in progress, every actor's."""
        return self.client.xlen(keys.WEBHOOK_OUTBOX)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop taking deliveries; one in progress finishes (or is claimed by another worker later)."""
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=timeout_s)

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                taken = self._take()
            except redis.RedisError as exc:
                log.warning("webhook outbox: Redis error (%s); retrying in 1 s", exc)
                self._stop.wait(1.0)
                continue
            if taken is not None:
                self._send(*taken)

    def _take(self) -> tuple[bytes, Delivery] | None:
        """A delivery a dead worker left past reclaim_after_s, else a new one (waiting up to 0.5 s)."""
        _, claimed, *_ = self.client.xautoclaim(keys.WEBHOOK_OUTBOX, GROUP, self.consumer,
                                                 min_idle_time=int(self.config.reclaim_after_s * 1000), count=1)
        if not claimed:
            read = self.client.xreadgroup(GROUP, self.consumer, {keys.WEBHOOK_OUTBOX: ">"}, count=1, block=500)
            claimed = read[0][1] if read else []
        if not claimed:
            return None
        entry_id, fields = claimed[0]
        if fields is None:  # deleted while pending: nothing to deliver
            self._ack(entry_id)
            return None
        text = {k.decode() if isinstance(k, bytes) else k: v for k, v in fields.items()}
        return entry_id, Delivery(body=_bytes(text["body"]), **{n: _bytes(text[n]).decode() for n in _FIELDS})

    def _send(self, entry_id: bytes, delivery: Delivery) -> None:
        try:
            deliver(delivery, self.config, resolve=self._resolve)
            self.delivered += 1
        except DeliveryFailed as exc:
            self._failed(delivery, exc.code, exc.reason)
        except Exception as exc:  # a bug must not kill the worker and strand the outbox
            log.exception("webhook delivery of query %s crashed", delivery.query_id)
            self._failed(delivery, "webhook_failed", f"{type(exc).__name__}")
        self._ack(entry_id)

    def _ack(self, entry_id: bytes) -> None:
        """Acknowledge and delete; retried through Redis trouble (else another worker would send it again)."""
        while True:
            try:
                with self.client.pipeline(transaction=True) as pipe:
                    pipe.xack(keys.WEBHOOK_OUTBOX, GROUP, entry_id)
                    pipe.xdel(keys.WEBHOOK_OUTBOX, entry_id)
                    pipe.execute()
                return
            except redis.RedisError as exc:
                if self._stop.wait(1.0):
                    return  # closing: the entry stays pending and is claimed (sent again) after reclaim_after_s
                log.warning("webhook outbox: acknowledging %s failed (%s); retrying", entry_id, exc)

    def _failed(self, delivery: Delivery, code: str, reason: str) -> None:
        self.failed += 1
        # The URL stays out of the log: it may carry a tenant's token in its path or query.
        log.warning("webhook of standing query %s (tenant %s) not delivered: %s: %s",
                    delivery.query_id, delivery.tenant_id, code, reason)
        try:
            self.on_failure(delivery, code, reason)
        except Exception:
            log.exception("recording the failed webhook of query %s failed", delivery.query_id)


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
