"""The stream-control actor: applies commands from the stream-control topic and runs resumed streams' catch-ups.

One per pipeline (named "stream-control"). The HTTP API and the CLI apply their operations themselves, through
the same `StreamControl`; catch-ups they ask for are queued in Redis and run here, so a catch-up outlives the
request that asked for it and a restart of this actor (the queue is in Redis).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import ray

from pipelines import metrics
from pipelines.config import LivelensConfig
from pipelines.ray.clients import RayMemoryClient
from pipelines.ray.dag import find_stages
from pipelines.ray.placement import actor_options
from pipelines.ray.runtime import setup_logging

log = logging.getLogger(__name__)

# How often the actor looks for a catch-up that has come due.
_CATCH_UP_POLL_S = 0.5


def stream_control(config: LivelensConfig):
    """A `StreamControl` over the running pipeline's memory actors."""
    from pipelines.redis_io import redis_client
    from pipelines.streams.control import StreamControl

    return StreamControl(config, redis_client(config.redis), RayMemoryClient(find_stages(config).memory))


@ray.remote(max_restarts=-1, max_concurrency=4)
class StreamControlActor:
    def __init__(self, config: LivelensConfig):
        metrics.configure(config.metrics)
        from pipelines.redis_io import redis_client
        from pipelines.streams.catchup import CatchUpRunner
        from pipelines.streams.commands import StreamCommandConsumer

        setup_logging()
        control = stream_control(config)
        self.consumer = StreamCommandConsumer(config, control)
        self.catch_ups = CatchUpRunner(config, redis_client(config.redis), control.memory)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self.consumer.run, args=(self._stop,), daemon=True,
                                          name="stream-commands"),
                         threading.Thread(target=self._run_catch_ups, daemon=True, name="catch-ups")]
        for thread in self._threads:
            thread.start()

    def _run_catch_ups(self) -> None:
        while not self._stop.wait(_CATCH_UP_POLL_S):
            try:
                self.catch_ups.run_due()
            except Exception:  # Kafka, Redis or memory in trouble: the job stays queued and runs again
                log.exception("catch-up failed; retrying")
                self._stop.wait(5.0)

    def stats(self) -> dict[str, Any]:
        return {"commands_applied": self.consumer.applied, "commands_refused": self.consumer.refused,
                "catch_up_segments": self.catch_ups.segments_stored,
                "alive": all(t.is_alive() for t in self._threads)}

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def start_stream_control(config: LivelensConfig, *, detached: bool = False):
    opts: dict[str, Any] = dict(name="stream-control", namespace=config.ray.namespace, get_if_exists=True,
                                **actor_options(config, "query"))
    if detached:
        opts["lifetime"] = "detached"
    return StreamControlActor.options(**opts).remote(config)
