"""Why a segment failed, and what the source does about it.

Three kinds of failure, three answers:

- bad input: a stage's `StageError` (undecodable, oversize, ...). The segment can never succeed: it becomes a
  dead letter at once and the stream flows on behind it.
- infrastructure: a dependency is away (Redis down or timing out, the broker unreachable, a Ray actor dead or
  restarting, an earlier segment of the same stream not yet written). Nothing is wrong with the segment: it
  waits, and is retried with capped exponential backoff for as long as the dependency stays away. It is never
  dead-lettered, so an outage of any length loses nothing.
- a crash of our code on this segment (any other exception): retried ``pipeline.segment_attempts`` times in
  case it was a fluke, then dead-lettered as ``pipeline_error``, so that one segment that trips a bug cannot
  hold its stream forever.

The Ray-specific errors are mapped to `DependencyUnavailable` by the Ray backend (`pipelines.ray.sources.RayIngest`);
this module knows only the client libraries' errors.
"""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass

import redis.exceptions
from kafka.errors import KafkaError


class DependencyUnavailable(Exception):
    """A dependency the segment needs is away; ``dependency`` names it for logs and metrics ("redis", "kafka",
    "ray-actor", "predecessor")."""

    def __init__(self, dependency: str, detail: str):
        super().__init__(f"{dependency}: {detail}")
        self.dependency = dependency
        self.detail = detail

    def __reduce__(self):  # raised in actors, read in the source: keep both fields across pickling
        return (type(self), (self.dependency, self.detail))


class PredecessorFailed(DependencyUnavailable):
    """The segment before this one in its stream has not been stored: writing this one now would reorder the
    stream, so it fails too and is retried after its predecessor."""

    def __init__(self, dependency: str = "predecessor", detail: str = ""):
        super().__init__(dependency, detail)


# Redis refusing because it is loading, read-only (a replica) or unable to persist (MISCONF) is away too.
_REDIS_AWAY = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError,
               redis.exceptions.ReadOnlyError)
_REDIS_AWAY_REPLIES = ("MISCONF", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")


def dependency_of(exc: BaseException) -> str | None:
    """The dependency an exception says is away, or None when it is not an infrastructure failure."""
    if isinstance(exc, DependencyUnavailable):
        return exc.dependency
    if isinstance(exc, _REDIS_AWAY):
        return "redis"
    if isinstance(exc, redis.exceptions.ResponseError) and str(exc).split(" ", 1)[0] in _REDIS_AWAY_REPLIES:
        return "redis"
    if isinstance(exc, KafkaError):
        return "kafka"
    if isinstance(exc, (TimeoutError, ConnectionError, socket.timeout, socket.gaierror)):
        return "network"
    return None


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with jitter: attempt 1 waits about ``initial_s``, each next one twice as long,
    never more than ``max_s``. The jitter (+-20%) keeps many waiting streams from retrying in lockstep."""

    initial_s: float = 0.5
    max_s: float = 10.0

    def delay(self, attempt: int) -> float:
        base = min(self.max_s, self.initial_s * 2 ** max(0, attempt - 1))
        return base * random.uniform(0.8, 1.2)
