"""A real Ray runtime and a deployed pipeline per test, on the real broker and a fresh redis-server."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
import redis

from pipelines.api.deployment import deploy_pipeline
from pipelines.cli.sample_video import write_sample_video
from pipelines.config import LivelensConfig

# address="local": always a fresh runtime of our own, never a cluster someone else started here.
RAY_INIT = dict(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, namespace="livelens-tests")


@pytest.fixture(scope="session")
def ray_runtime() -> Iterator[None]:
    # tests/reliability/conftest.py imports this fixture, which makes it a second session fixture of its own:
    # when both folders run in one session, the runtime the first one started is shared, and only that one
    # shuts it down (a second ray.init would fail).
    if ray.is_initialized():
        yield
        return
    ray.init(**RAY_INIT)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def sample_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sample") / "broadcast.mp4"
    truth = write_sample_video(out, duration_s=24.0)
    return out, truth


def make_config(tmp_path: Path, broker, redis_server, tiny_models, **sections) -> LivelensConfig:
    """A config isolated per test: own topics, own consumer groups, own Ray namespace, own redis."""
    tag = uuid.uuid4().hex[:8]
    kafka = dict(bootstrap=broker.address, topic_prefix=f"t{tag}.", partitions=4,
                 ingest_group=f"ingest-{tag}", query_group=f"query-{tag}")
    kafka.update(sections.pop("kafka", {}))
    base = dict(
        data_dir=tmp_path / "data",
        kafka=kafka,
        redis=dict(url=redis_server.address),
        ray=dict(namespace=f"ns-{tag}"),
        encode=dict(model=str(tiny_models["clip"]), batch_frames=16, max_batch_wait_ms=5),
        serve=dict(port=_free_port()),
    )
    base.update(sections)
    return LivelensConfig(**base)


def _free_port() -> int:
    from deploy.processes import free_port

    return free_port()


@pytest.fixture
def deployed(ray_runtime, tmp_path, kafka_broker, redis_server, tiny_models):
    """Deploy a pipeline; returns a factory so a test may pass config sections first."""
    deployed_ns: list[tuple[LivelensConfig, bool, object]] = []

    def deploy(http: bool = False, **sections) -> LivelensConfig:
        config = make_config(tmp_path, kafka_broker, redis_server, tiny_models, **sections)
        # Held until teardown: non-detached actors live as long as a handle to them does.
        deployed_ns.append((config, http, deploy_pipeline(config, detached=False, http=http)))
        return config

    yield deploy
    for config, http, _ in deployed_ns:
        if http:
            from ray import serve

            serve.shutdown()
        _kill_namespace(config)


def _kill_namespace(config: LivelensConfig) -> None:
    """Kill every pipeline actor by its name (the names are a function of the config)."""
    p = config.pipeline
    names = ([f"source-{i}" for i in range(p.sources)] + ["query-consumer", "stream-control"]
             + [f"decode-{i}" for i in range(p.decoders)] + [f"encode-{i}" for i in range(p.encoders)]
             + [f"compress-{i}" for i in range(p.compressors)] + [f"answer-{i}" for i in range(p.answerers)]
             + [f"ocr-{i}" for i in range(p.ocr_readers)] + [f"transcript-{i}" for i in range(p.transcript_readers)]
             + [f"standing-{i}" for i in range(p.standing_evaluators)] + [f"memory-{i}" for i in range(config.memory.shards)]
             + [f"moderate-{i}" for i in range(config.moderation.moderators)] + ["verify-0"])
    for name in names:
        try:
            ray.kill(ray.get_actor(name, namespace=config.ray.namespace), no_restart=True)
        except ValueError:
            pass  # never started


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.25):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def redis_client(config: LivelensConfig) -> redis.Redis:
    return redis.Redis.from_url(config.redis.url)
