"""Per-tenant topics (``kafka.tenant_topics``): the topics a consumer reads, and whose records they hold.

With tenant topics on, a tenant's segments, queries, answers and alerts live on
``<topic_prefix>tenant.<tenant_id>.<topic>``. Broker ACLs with a prefixed resource pattern on
``<topic_prefix>tenant.<tenant_id>.`` then decide who may write and read a tenant's records
(docs/security.md), so the topic, not the record, says whose a record is: a record whose ``tenant_id``
names another tenant than its topic is refused (dead letter ``tenant_mismatch``), never run for the tenant it
claims. Consumers subscribe to every tenant's topic of a kind by pattern and find a new tenant's topics
within ``kafka.topic_refresh_ms``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipelines.config import TENANT_TOPIC_ID, TENANT_TOPICS, KafkaConfig

TENANT_MISMATCH = "tenant_mismatch"


def subscription(config: KafkaConfig, name: str) -> dict:
    """Keyword arguments of ``KafkaConsumer.subscribe`` for every tenant's topic ``name``."""
    if not (config.tenant_topics and name in TENANT_TOPICS):
        return {"topics": [config.topic(name)]}
    base = getattr(config, f"{name}_topic")
    return {"pattern": f"^{re.escape(config.topic_prefix)}tenant\\.{TENANT_TOPIC_ID.pattern}\\.{re.escape(base)}$"}


def consumer_options(config: KafkaConfig) -> dict:
    """Consumer options for pattern subscriptions: how soon a new tenant's topics are seen."""
    return {"metadata_max_age_ms": config.topic_refresh_ms} if config.tenant_topics else {}


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
