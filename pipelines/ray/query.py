"""The query side's actors: answerers and the Kafka query consumer, and the query engine over the running actors."""

from __future__ import annotations

import threading
from typing import Any

import ray

from pipelines import metrics
from pipelines.config import LivelensConfig
from pipelines.query.engine import QueryConsumer, QueryEngine
from pipelines.ray.clients import RayAnswerer, RayMemoryClient, RayQueryEncoder
from pipelines.ray.dag import find_stages
from pipelines.ray.placement import actor_options
from pipelines.ray.runtime import setup_logging
from pipelines.ray.supervision import supervised


def query_engine(config: LivelensConfig) -> QueryEngine:
    """The engine over the running pipeline's memory, encode and answer actors (found by name)."""
    stages = find_stages(config)
    answerers = [ray.get_actor(f"answer-{i}", namespace=config.ray.namespace) for i in range(config.pipeline.answerers)]
    return QueryEngine(config, RayMemoryClient(stages.memory), RayQueryEncoder(stages.encoders), RayAnswerer(answerers))


@ray.remote(max_restarts=-1, max_task_retries=3)
class AnswerActor:
    def __init__(self, config: LivelensConfig):
        metrics.configure(config.metrics)
        from operators.answer import Answerer
        from pipelines.models import answer_model

        self.answerer = Answerer(config.answer, answer_model(config))

    def answer(self, question: str, evidence: list):
        return self.answerer.answer(question, evidence)

    def kind(self) -> str:
        return self.answerer.kind


def start_answerers(config: LivelensConfig, *, detached: bool = False) -> list:
    opts: dict[str, Any] = dict(namespace=config.ray.namespace, get_if_exists=True,
                                **actor_options(config, "answer"))
    if detached:
        opts["lifetime"] = "detached"
    return [AnswerActor.options(name=f"answer-{i}", **opts).remote(config) for i in range(config.pipeline.answerers)]


@ray.remote(max_restarts=-1, max_concurrency=4)
class QueryConsumerActor:
    def __init__(self, config: LivelensConfig):
        metrics.configure(config.metrics)
        setup_logging()
        self.consumer = QueryConsumer(config, query_engine(config))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=supervised, args=(self.consumer.run, self._stop, "query consumer"),
                                        daemon=True, name="query-consumer")
        self._thread.start()

    def stats(self) -> dict[str, Any]:
        return {"answered": self.consumer.answered, "dead_letters": self.consumer.dead_letters,
                "reconnects": self.consumer.reconnects, "alive": self._thread.is_alive()}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def start_query_consumer(config: LivelensConfig, *, detached: bool = False):
    opts: dict[str, Any] = dict(name="query-consumer", namespace=config.ray.namespace, get_if_exists=True,
                                **actor_options(config, "query"))
    if detached:
        opts["lifetime"] = "detached"
    return QueryConsumerActor.options(**opts).remote(config)
