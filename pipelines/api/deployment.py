"""Deploying the whole pipeline: every actor, the query consumer and, on request, the HTTP API.

The one module that sees every part at once, so it sits above them all (the HTTP API included); the
parts themselves never import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray

from pipelines.api.guard import check_exposure
from pipelines.api.http import LivelensAPI, start_http
from pipelines.config import LivelensConfig
from pipelines.settings.connections import TENANT_TOPIC_ID
from pipelines.kafka.client import ensure_topics
from pipelines.ray.control import start_stream_control
from pipelines.ray.query import start_answerers, start_query_consumer
from pipelines.ray.dag import start_stages
from pipelines.ray.sources import start_sources
from pipelines.ray.runtime import connect_ray, effective_config
from pipelines.redis_io import check_durability, redis_client


@dataclass
class PipelineDeployment:
    """Handles of every actor of a deployed pipeline.

    A non-detached actor lives only while a handle to it does, so whoever deploys one
    (a test, a benchmark) keeps this object for as long as the pipeline should run.
    """

    stages: Any
    answerers: list
    sources: list
    query_consumer: Any
    stream_control: Any = None
    http_url: str = ""


def deploy_pipeline(config: LivelensConfig, *, detached: bool, http: bool = True) -> PipelineDeployment:
    """Start every actor of the pipeline (or find them running) and, optionally, the HTTP API. First, Redis's
    persistence is checked (redis.durability_check): committing offsets after a write relies on it."""
    check_durability(redis_client(config.redis), config.redis)
    connect_ray(config)
    stages = start_stages(config, detached=detached)
    # Wait until the stateful stages are up before sources start feeding them.
    ray.get([m.call.remote("stats") for m in stages.memory] + [e.describe.remote() for e in stages.encoders])
    answerers = start_answerers(config, detached=detached)
    ray.get([a.kind.remote() for a in answerers])
    provision_known_tenants(config)
    deployment = PipelineDeployment(stages=stages, answerers=answerers, sources=start_sources(config, detached=detached),
                                    query_consumer=start_query_consumer(config, detached=detached),
                                    stream_control=start_stream_control(config, detached=detached))
    if http:
        deployment.http_url = start_http(config)
    return deployment


def provision_known_tenants(config: LivelensConfig) -> list[str]:
    """With kafka.tenant_topics: create the own topics of every tenant the config names (API keys, webhook
    secrets) before the consumers start, so they join their groups once with every known tenant's topics (and
    an operator can attach ACLs to them). A tenant the config does not name is still found within
    kafka.topic_refresh_ms of its first record, at the cost of a rebalance. Returns the topics created."""
    if not config.kafka.tenant_topics:
        return []
    tenants = set(config.serve.api_keys.values()) | set(config.webhooks.signing_secrets)
    created = []
    for tenant in sorted(t for t in tenants if TENANT_TOPIC_ID.fullmatch(t)):
        created += ensure_topics(config.kafka, tenant_id=tenant)
    return created


def app_from_env(args: dict[str, str] | None = None):
    """Serve application builder for clusters (KubeRay RayService, `serve run pipelines.api.deployment:app_from_env`).

    Reads the config from the environment, deploys the pipeline's actors (or finds them running),
    then returns the API bound to that config.
    """
    config = effective_config(LivelensConfig())
    # Where this runs (KubeRay), the RayService, not serve.host, decides the address: take it as exposed.
    check_exposure(config.serve, host="0.0.0.0")
    deploy_pipeline(config, detached=True, http=False)
    return LivelensAPI.bind(config)
