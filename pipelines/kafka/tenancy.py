"""Per-tenant topics (``kafka.tenant_topics``): the topics a consumer reads, and whose records they hold.

With tenant topics on, a tenant's segments, queries, answers and alerts live on
``<topic_prefix>tenant.<tenant_id>.<topic>``. Broker ACLs with a prefixed resource pattern on
``<topic_prefix>tenant.<tenant_id>.`` then decide who may write and read a tenant's records
(docs/security.md), so the topic, not the record, says whose a record is: a record whose ``tenant_id``
names another tenant than its topic is refused (dead letter ``tenant_mismatch``), never run for the tenant it
claims. Consumers read every tenant's topic of a kind (`TopicWatch`) and find a new tenant's topics within
``kafka.topic_refresh_ms``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kafka import KafkaConsumer

from pipelines.settings.connections import TENANT_TOPIC_ID, TENANT_TOPICS, KafkaConfig

log = logging.getLogger(__name__)

TENANT_MISMATCH = "tenant_mismatch"


class TopicWatch:
    """The topics of one kind a consumer reads: the shared one, or every tenant's that exists, listed again
    every ``kafka.topic_refresh_ms`` and subscribed to in place (the consumer keeps its group membership).

    An explicit list, not a pattern subscription: with kafka-python 3.0.12 a group consumer that joined while
    its pattern matched nothing stayed without partitions after a matching topic appeared (its
    metadata-triggered rejoin stalled after SyncGroup), which is exactly a pipeline started before its tenants
    publish; a subscription changed while a join is pending stalled the same way, so a change waits until the
    consumer holds partitions (a member left without any by a larger group picks up new topics only at the
    next rebalance). Nor a new consumer per change: one that leaves while its join is pending leaves the local
    broker (tansu) waiting for it as the group's leader, and the next member's SyncGroup fails forever."""

    def __init__(self, config: KafkaConfig, name: str):
        self.config, self.name = config, name
        self.topics: list[str] = []
        self._options: dict = {}
        self._due = 0.0

    def subscribe(self, consumer: KafkaConsumer, **options) -> None:
        """Subscribe ``consumer`` (with ``options``, e.g. a rebalance listener) to the topics of its kind that
        exist now; none yet: it reads nothing until `refresh` finds some."""
        self._options = options
        self.topics = self._list(consumer)
        if self.topics:
            self._subscribe(consumer)
        self._due = time.monotonic() + self.config.topic_refresh_ms / 1000

    def refresh(self, consumer: KafkaConsumer) -> None:
        """Subscribe to the list again when a tenant's topic appeared or went (looked at once per refresh)."""
        if not self._per_tenant() or time.monotonic() < self._due:
            return
        self._due = time.monotonic() + self.config.topic_refresh_ms / 1000
        if self.topics and not consumer.assignment():
            return  # its group join is still pending: a subscription changed mid-join can stall it (see above)
        if (now := self._list(consumer)) != self.topics:
            log.info("%s topics: %d -> %d", self.name, len(self.topics), len(now))
            self.topics = now
            if now:
                self._subscribe(consumer)
            else:
                consumer.unsubscribe()

    def _subscribe(self, consumer: KafkaConsumer) -> None:
        consumer.subscribe(self.topics, **self._options)
        # kafka-python 3.0.12 drops the outcome of a join that a subscription change started when the poll that
        # started it times out before the join ends (our polls wait 50 ms, a join about 3 s): the next poll sees
        # the subscription joined and returns without applying the assignment the broker sent, so the member
        # keeps its old partitions and never reads the new topic (join_group_async returns as soon as
        # need_rejoin() is False, without awaiting the finished join task). A rejoin marked as requested, as a
        # broker's rebalance notice marks it, keeps later polls awaiting that join until it is applied.
        # Measured on the local broker: 5 of 6 subscription changes stalled for good without this, none with it.
        consumer._coordinator.request_rejoin()

    def _per_tenant(self) -> bool:
        return self.config.tenant_topics and self.name in TENANT_TOPICS

    def _list(self, consumer: KafkaConsumer) -> list[str]:
        return topics_of(self.config, self.name, consumer.topics)


def topics_of(config: KafkaConfig, name: str, existing: Callable[[], Iterable[str]]) -> list[str]:
    """The topics of kind ``name``: the shared one, or every tenant's among ``existing()`` (asked only then)."""
    if not (config.tenant_topics and name in TENANT_TOPICS):
        return [config.topic(name)]
    return sorted(t for t in existing() if tenant_of(config, name, t))


def tenant_of(config: KafkaConfig, name: str, topic: str) -> str | None:
    """The tenant whose topic ``name`` this is; None for a shared topic or a name that is no tenant's."""
    head, tail = f"{config.topic_prefix}tenant.", "." + getattr(config, f"{name}_topic")
    if not (topic.startswith(head) and topic.endswith(tail)):
        return None
    tenant = topic[len(head):-len(tail)]
    return tenant if TENANT_TOPIC_ID.fullmatch(tenant) else None


@dataclass(frozen=True)
class Refusal:
    """A record not to act on: ``owner`` files its dead letter (the topic's tenant, not the claimed one)."""

    owner: str
    reason: str


def refusal(config: KafkaConfig, name: str, topic: str, claimed: str) -> Refusal | None:
    """Why a record on ``topic`` claiming tenant ``claimed`` may not be acted on; None when it may."""
    if not (config.tenant_topics and name in TENANT_TOPICS):
        return None
    owner = tenant_of(config, name, topic)
    if owner is None:
        return Refusal("unknown", f"{topic} is not a tenant's {name} topic")
    if owner != claimed:
        return Refusal(owner, f"a record on tenant {owner}'s topic {topic} claims tenant {claimed}")
    return None
