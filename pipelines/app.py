"""Deploying the whole pipeline onto a Ray runtime, and finding the stack a config points at."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from deploy.local_stack import StackState
from deploy.ray_token import use_token
from pipelines.config import LivelensConfig

log = logging.getLogger(__name__)


def effective_config(config: LivelensConfig | None = None) -> LivelensConfig:
    """The config with the local stack's addresses filled in where nothing else set them,
    and the data dir made absolute (Ray workers do not share the caller's working directory)."""
    config = config or LivelensConfig()
    data_dir = Path(config.data_dir).resolve()
    state = StackState.load(data_dir)
    updates: dict = {"data_dir": data_dir}
    if state is not None:
        if not config.kafka.bootstrap:
            updates["kafka"] = config.kafka.model_copy(update={"bootstrap": state.kafka_bootstrap})
        if not config.redis.url:
            updates["redis"] = config.redis.model_copy(update={"url": state.redis_url})
        if not config.ray.address:
            updates["ray"] = config.ray.model_copy(update={
                "address": state.ray_address,
                "auth_token_path": config.ray.auth_token_path or state.ray_auth_token_path or None})
    return config.model_copy(update=updates)


def connect_ray(config: LivelensConfig) -> None:
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if config.ray.auth_token_path:
        use_token(config.ray.auth_token_path)
    ray.init(address=config.ray.address or None, namespace=config.ray.namespace, log_to_driver=False,
             include_dashboard=False if not config.ray.address else None,
             num_cpus=config.ray.num_cpus if not config.ray.address else None)


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
    http_url: str = ""


def deploy_pipeline(config: LivelensConfig, *, detached: bool, http: bool = True) -> PipelineDeployment:
    """Start every actor of the pipeline (or find them running) and, optionally, the HTTP API."""
    from pipelines.dag import start_sources, start_stages
    from pipelines.query_service import start_answerers, start_query_consumer

    connect_ray(config)
    stages = start_stages(config, detached=detached)
    # Wait until the stateful stages are up before sources start feeding them.
    ray.get([m.call.remote("stats") for m in stages.memory] + [e.describe.remote() for e in stages.encoders])
    answerers = start_answerers(config, detached=detached)
    ray.get([a.kind.remote() for a in answerers])
    deployment = PipelineDeployment(stages=stages, answerers=answerers, sources=start_sources(config, detached=detached),
                                    query_consumer=start_query_consumer(config, detached=detached))
    if http:
        from pipelines.http_api import start_http

        deployment.http_url = start_http(config)
    return deployment


def pipeline_stats(config: LivelensConfig) -> dict[str, dict]:
    """Stats of every named actor that answers (sources, query consumer, memory shards)."""
    out: dict[str, dict] = {}
    ns = config.ray.namespace
    for i in range(config.pipeline.sources):
        out[f"source-{i}"] = ray.get(ray.get_actor(f"source-{i}", namespace=ns).stats.remote(), timeout=10)
    out["query-consumer"] = ray.get(ray.get_actor("query-consumer", namespace=ns).stats.remote(), timeout=10)
    for i in range(config.memory.shards):
        out[f"memory-{i}"] = ray.get(ray.get_actor(f"memory-{i}", namespace=ns).call.remote("stats"), timeout=10)
    return out
