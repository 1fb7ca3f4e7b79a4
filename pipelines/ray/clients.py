"""Ray implementations of the typed interfaces the floors below take: memory, the query encoder, the answerer.

Callers see the same methods, arguments and errors as in-process: each call goes to the actor that should serve
it (memory: the shard that owns the tenant, through the one tenant-to-shard function), and bad input raised in
an actor (`StageError`, `ValueError`) is raised here as itself. An actor that died, a lost node, or Redis away
inside the actor is `DependencyUnavailable` (pipelines/ray/supervision.py `settle`): infrastructure trouble,
not bad input.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import ray

from memory_store import keys
from memory_store.client import MemoryClient
from memory_store.service import MemoryStore
from pipelines.config import LivelensConfig
from pipelines.ingest.replay import ReplayError
from pipelines.ray.placement import memory_shard
from pipelines.ray.runtime import connect_ray
from pipelines.ray.supervision import settle
from pipelines.redis_io import redis_client

log = logging.getLogger(__name__)


def result(ref: Any) -> Any:
    """``ray.get(ref)``, with the bad-input errors of the store and the operators raised as themselves."""
    try:
        return settle(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, ValueError):
            raise exc.cause from None
        raise


class RayMemoryClient:
    """`memory_store.client.MemoryClient` over the memory actors (one per shard).

    The actors answer reads through one `call(method, ...)` entry (pipelines/ray/memory.py): this class is the
    only caller, so the method names stay in one place and every other caller is typed.
    """

    def __init__(self, actors: Sequence[Any]):
        self.actors = list(actors)

    @classmethod
    def named(cls, config: LivelensConfig) -> RayMemoryClient:
        """The running pipeline's memory actors, found by name (ValueError when none is deployed)."""
        return cls([ray.get_actor(f"memory-{i}", namespace=config.ray.namespace) for i in range(config.memory.shards)])

    def actor_for(self, tenant_id: str) -> Any:
        return self.actors[memory_shard(tenant_id, len(self.actors))]

    def _call(self, tenant_id: str, method: str, *args: Any, **kwargs: Any) -> Any:
        return result(self.actor_for(tenant_id).call.remote(method, *args, **kwargs))

    def write(self, batch, texts=None, *, replace: bool = False, transcript=None):
        return result(self.actor_for(batch.segment.tenant_id).write.remote(batch, texts, replace, transcript))

    def search_transcript(self, tenant_id: str, vector: np.ndarray, *, stream_ids: Sequence[str] | None = None,
                          t_from: float | None = None, t_to: float | None = None, k: int = 5) -> list:
        return self._call(tenant_id, "search_transcript", tenant_id, vector, stream_ids=stream_ids, t_from=t_from,
                          t_to=t_to, k=k)

    def transcript(self, tenant_id: str, stream_id: str, t_from: float | None = None, t_to: float | None = None,
                   limit: int = 1000) -> list:
        return self._call(tenant_id, "transcript", tenant_id, stream_id, t_from, t_to, limit)

    def search(self, tenant_id: str, vector: np.ndarray, *, stream_ids: Sequence[str] | None = None,
               t_from: float | None = None, t_to: float | None = None, k: int = 5) -> list:
        return self._call(tenant_id, "search", tenant_id, vector, stream_ids=stream_ids, t_from=t_from, t_to=t_to,
                          k=k)

    def search_text(self, tenant_id: str, vector: np.ndarray, *, stream_ids: Sequence[str] | None = None,
                    t_from: float | None = None, t_to: float | None = None, k: int = 5) -> list:
        return self._call(tenant_id, "search_text", tenant_id, vector, stream_ids=stream_ids, t_from=t_from,
                          t_to=t_to, k=k)

    def recent(self, tenant_id: str, stream_ids: Sequence[str] | None = None, n: int = 8, *,
               t_from: float | None = None, t_to: float | None = None) -> list:
        return self._call(tenant_id, "recent", tenant_id, stream_ids, n, t_from=t_from, t_to=t_to)

    def timeline(self, tenant_id: str, stream_id: str, t_from: float | None = None, t_to: float | None = None,
                 limit: int = 1000) -> list:
        return self._call(tenant_id, "timeline", tenant_id, stream_id, t_from, t_to, limit)

    def streams(self, tenant_id: str) -> list:
        return self._call(tenant_id, "streams", tenant_id)

    def frames(self, tenant_id: str, frame_keys: Sequence[str]) -> list:
        return self._call(tenant_id, "frames", tenant_id, frame_keys)

    def thumbnail(self, key: str) -> bytes | None:
        tenant_id = keys.thumbnail_tenant(key)
        if tenant_id is None:
            raise ValueError(f"not a thumbnail key: {key[:200]!r}")
        return self._call(tenant_id, "thumbnail", key)

    def purge_stream(self, tenant_id: str, stream_id: str) -> int:
        return self._call(tenant_id, "purge_stream", tenant_id, stream_id)

    def delete_stream(self, tenant_id: str, stream_id: str) -> bool:
        return self._call(tenant_id, "delete_stream", tenant_id, stream_id)

    def erase_stream(self, tenant_id: str, stream_id: str) -> int:
        return self._call(tenant_id, "erase_stream", tenant_id, stream_id)

    def set_retention(self, tenant_id: str, stream_id: str, seconds: float | None) -> int:
        return self._call(tenant_id, "set_retention", tenant_id, stream_id, seconds)

    def shard_stats(self, timeout_s: float | None = None) -> list[dict[str, Any]]:
        return ray.get([a.call.remote("stats") for a in self.actors], timeout=timeout_s)

    def rebuild(self) -> None:
        """Every shard catches its FAISS indexes up with Redis (after a backfill wrote to Redis directly)."""
        ray.get([a.call.remote("rebuild") for a in self.actors])


class RayQueryEncoder:
    """`pipelines.query.clients.QueryEncoder` over the encode actors, taken in turn."""

    def __init__(self, actors: Sequence[Any]):
        self.actors = list(actors)
        self._next = 0

    def _actor(self) -> Any:
        actor = self.actors[self._next % len(self.actors)]
        self._next += 1
        return actor

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        return result(self._actor().embed_text.remote(list(texts)))

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        return result(self._actor().embed_images.remote(images))

    def encode_images(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return result(self._actor().encode_images.remote(images))


class RayAnswerer:
    """`pipelines.query.clients.Answering` over the answer actors, taken in turn."""

    def __init__(self, actors: Sequence[Any]):
        self.actors = list(actors)
        self._next = 0

    def answer(self, question: str, evidence: Sequence[Any]):
        actor = self.actors[self._next % len(self.actors)]
        self._next += 1
        return result(actor.answer.remote(question, list(evidence)))


def memory_writer(config: LivelensConfig) -> MemoryClient:
    """Where `livelens replay` writes: the running pipeline's memory actors when one is deployed (``ray.address``
    set), else a store on Redis.

    Why not Redis directly, as backfill does: a replacing write removes index ids, and a memory actor that did
    not make the write would keep serving them until its next rebuild (searches would find frames that are
    gone). Through the actor, its index drops them in the same call.
    """
    if config.ray.address:
        connect_ray(config)
        try:
            return RayMemoryClient.named(config)
        except ValueError:
            log.info("no pipeline deployed: writing to Redis directly (memory actors rebuild when they start)")
    if not config.redis.url:
        raise ReplayError("no Redis URL: set LIVELENS_REDIS_URL or run `livelens up`")
    return MemoryStore(redis_client(config.redis), config.memory)
