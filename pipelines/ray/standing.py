"""Standing queries as a Ray actor: `StandingActor` evaluates each stored segment against the tenants' standing
queries (pipelines/query/standing.py) and puts the alerts on Kafka before the source may commit the segment.

A stream's segments go to the same evaluator (sharded by stream), in stream order.
"""

from __future__ import annotations

import logging

import ray
from kafka.errors import KafkaError

from operators.frames import CompressedBatch
from pipelines import metrics
from pipelines.config import LivelensConfig
from pipelines.failures import DependencyUnavailable
from pipelines.ray.supervision import RESTART, require_predecessor
from pipelines.redis_io import redis_client

log = logging.getLogger(__name__)


@ray.remote(**RESTART)
class StandingActor:
    """Evaluates standing queries on each stored segment; alerts are acknowledged before the source commits."""

    def __init__(self, config: LivelensConfig):
        metrics.configure(config.metrics)
        from pipelines.kafka.client import make_producer
        from pipelines.moderation.alerts import AlertLog
        from pipelines.query.outbox import WebhookOutbox
        from pipelines.query.standing import StandingEvaluator

        self.config = config
        self.producer = make_producer(config.kafka)
        client = redis_client(config.redis)
        self.evaluator = StandingEvaluator(client, self._emit)
        self.alerts = AlertLog(client)  # what GET /v1/alerts serves
        self.webhook_failures = 0
        # Webhooks leave through the outbox in Redis: evaluate() returns once alerts are on the topic, whatever
        # the tenants' endpoints do, and deliveries queued here outlive this actor (pipelines/query/outbox.py).
        self.outbox = WebhookOutbox(config.webhooks, client, self._webhook_failed)

    def evaluate(self, written, batch: CompressedBatch, texts: list | None, transcript=None, after: list | None = None):
        """``after``: the evaluations of the stream's earlier segments in flight: standing queries see a stream in
        order."""
        from pipelines.query.standing import frame_views

        require_predecessor(after, "standing queries")
        self.evaluator.evaluate(batch.segment.tenant_id, batch.segment.stream_id,
                                frame_views(batch, texts, transcript))
        return written

    def _emit(self, firings: list) -> None:
        from contracts import messages
        from pipelines.clips import alert_with_clip_urls
        from pipelines.query.standing import firing_alert
        from pipelines.query.webhooks import Delivery

        futures = []
        for firing in firings:
            alert = alert_with_clip_urls(self.config, firing_alert(firing, firing.query.tenant_id))
            topic = self.config.kafka.topic("alerts", alert.tenant_id)  # the tenant's own with tenant_topics
            futures.append((alert, self.producer.send(topic, key=firing.stream_id.encode(),
                                                      value=messages.encode(alert))))
            self.alerts.record(alert)
            if firing.query.webhook:
                self.outbox.submit(Delivery(tenant_id=alert.tenant_id, query_id=firing.query.query_id,
                                            url=firing.query.webhook, body=alert.model_dump_json(by_alias=True).encode(),
                                            idempotency_key=alert.alert_id, stream_id=alert.stream_id))
        try:
            for alert, future in futures:
                future.get(timeout=30)
                metrics.record_alert(alert)
        except KafkaError as exc:
            # A producer that failed (broker away past its timeout, fenced, closed) is not trusted again: a new
            # one is built, and the segment fails as waiting for Kafka, so the source retries it.
            self._rebuild_producer()
            raise DependencyUnavailable("kafka", f"alerts not acknowledged: {exc}") from exc

    def _rebuild_producer(self) -> None:
        from pipelines.kafka.client import make_producer

        # The new one first: the outbox's threads send dead letters through self.producer at any time, and if the
        # broker is still away make_producer raises (a dependency error) and the old one stays until next time.
        old, self.producer = self.producer, make_producer(self.config.kafka)
        try:
            old.close(timeout=5)
        except Exception:  # a producer of an unreachable broker may fail to close; it is dropped either way
            log.debug("closing the failed producer", exc_info=True)

    def _webhook_failed(self, delivery, code: str, reason: str) -> None:
        """A webhook that was not delivered: a dead letter (the alert itself is on the alerts topic)."""
        from kafka.structs import TopicPartition

        from pipelines.kafka import dead_letters

        self.webhook_failures += 1
        metrics.webhook_failed("standing_query")
        # No record of its own: the letter points at the tenant's alerts topic, partition and offset -1.
        letter = dead_letters.dead_letter(
            TopicPartition(self.config.kafka.topic("alerts", delivery.tenant_id), -1), [-1], stage="webhook",
            code=code, reason=f"standing query {delivery.query_id}, alert {delivery.idempotency_key}: {reason}",
            record_bytes=len(delivery.body), tenant_id=delivery.tenant_id, stream_id=delivery.stream_id)
        dead_letters.send(self.producer, self.config.kafka, letter)
