"""The Ray runtime a process works in: the config with the local stack's addresses, connecting, actor logging."""

from __future__ import annotations

import logging
import os
from pathlib import Path

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


def setup_logging() -> None:
    """Actor processes log at INFO; kafka-python's INFO is a connection diary, kept at WARNING."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)


def connect_ray(config: LivelensConfig) -> None:
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if config.ray.auth_token_path:
        use_token(config.ray.auth_token_path)
    ray.init(address=config.ray.address or None, namespace=config.ray.namespace, log_to_driver=False,
             include_dashboard=False if not config.ray.address else None,
             num_cpus=config.ray.num_cpus if not config.ray.address else None)


def pipeline_stats(config: LivelensConfig) -> dict[str, dict]:
    """Stats of every named actor that answers (sources, query consumer, stream control, memory shards)."""
    out: dict[str, dict] = {}
    ns = config.ray.namespace
    for i in range(config.pipeline.sources):
        out[f"source-{i}"] = ray.get(ray.get_actor(f"source-{i}", namespace=ns).stats.remote(), timeout=10)
    out["query-consumer"] = ray.get(ray.get_actor("query-consumer", namespace=ns).stats.remote(), timeout=10)
    out["stream-control"] = ray.get(ray.get_actor("stream-control", namespace=ns).stats.remote(), timeout=10)
    for i in range(config.memory.shards):
        out[f"memory-{i}"] = ray.get(ray.get_actor(f"memory-{i}", namespace=ns).call.remote("stats"), timeout=10)
    return out
