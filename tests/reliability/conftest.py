"""One deployed pipeline shared by the fault tests of a module (a deploy costs tens of seconds on two cores):
each test publishes its own streams, injects its fault, and checks its own streams."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from deploy.processes import start_redis
from pipelines.api.deployment import deploy_pipeline
from pipelines.config import LivelensConfig
from pipelines.segmenter import iter_segments
from tests.integration.conftest import _free_port, _kill_namespace, ray_runtime, sample_video  # noqa: F401


@pytest.fixture(scope="module")
def fault_redis(tmp_path_factory) -> Iterator:
    """The module's redis-server (AOF, appendfsync always); a test that kills it restarts it on its port and
    puts the new pid here, so teardown stops whichever runs."""
    record = start_redis(tmp_path_factory.mktemp("fault-redis"))
    yield record
    record.stop()


@pytest.fixture(scope="module")
def stack(ray_runtime, tmp_path_factory, kafka_broker, fault_redis, tiny_models) -> Iterator[LivelensConfig]:  # noqa: F811
    tag = uuid.uuid4().hex[:8]
    config = LivelensConfig(
        data_dir=tmp_path_factory.mktemp("fault-data"),
        kafka=dict(bootstrap=kafka_broker.address, topic_prefix=f"r{tag}.", partitions=4, ingest_group=f"ingest-{tag}",
                   query_group=f"query-{tag}", request_timeout_ms=5000, ack_timeout_s=6),
        redis=dict(url=fault_redis.address, socket_timeout_s=2, connect_timeout_s=2),
        ray=dict(namespace=f"faults-{tag}"),
        encode=dict(model=str(tiny_models["clip"]), batch_frames=16, max_batch_wait_ms=5),
        ocr=dict(enabled=False),
        pipeline=dict(retry_initial_s=0.2, retry_max_s=2.0, decoders=1),
        serve=dict(port=_free_port()),
    )
    deployment = deploy_pipeline(config, detached=False, http=False)
    yield config
    del deployment
    _kill_namespace(config)


@pytest.fixture(scope="module")
def short_segments(sample_video) -> list:  # noqa: F811
    """Eight segments of the sample broadcast (16 s), cut once."""
    video, _ = sample_video
    return list(iter_segments(str(video)))[:8]
