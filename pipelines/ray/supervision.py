"""Failures of the Ray runtime told apart from bad input, stream order across retries, and supervised loops.

Every long-running loop of an actor runs under `supervised`; results the source and the query side read go
through `settle`, which turns Ray's "an actor / worker / object is gone" errors and a client library's
connection errors raised inside an actor into `DependencyUnavailable` (wait and retry, never a dead letter),
and a stage's StageError into itself (a dead letter). pipelines/failures.py has the policy.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any

import ray

from operators.frames import StageError
from pipelines.failures import DependencyUnavailable, PredecessorFailed, dependency_of

log = logging.getLogger(__name__)

# Every stage actor restarts when it dies, and its in-flight calls are retried: at-least-once, safe because
# memory writes are idempotent per segment.
RESTART = dict(max_restarts=-1, max_task_retries=3)

# Ray's errors that mean an actor, its worker or an object is gone (for now): infrastructure, not bad input.
RAY_AWAY = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, ray.exceptions.WorkerCrashedError,
            ray.exceptions.NodeDiedError, ray.exceptions.LocalRayletDiedError, ray.exceptions.RaySystemError,
            ray.exceptions.ObjectStoreFullError, ray.exceptions.OutOfMemoryError, ray.exceptions.GetTimeoutError,
            ray.exceptions.PendingCallsLimitExceeded)


# How long a sync step waits for its predecessors' results to be known. Tasks from one submitter run in order on
# a sync actor, but a finished task's result reaches its owner (the source) asynchronously: the next task can
# start before the owner knows the previous one is done. Milliseconds, normally; the bound only matters if a
# predecessor has genuinely not run: then the step fails with PredecessorFailed and is retried after it, rather
# than blocking the actor for long. (Actors that run calls out of order wait with `await_predecessors`.)
PREDECESSOR_WAIT_S = 5.0


def require_predecessor(after: list | None, where: str) -> None:
    """Refuse to go on with a segment while an earlier segment of its stream has not passed this step: running
    now would reorder the stream. A predecessor still running after PREDECESSOR_WAIT_S, or failed, raises
    PredecessorFailed, and the source retries this segment right after it. A predecessor refused as bad
    input (StageError) is no obstacle."""
    if not after:
        return
    ready, _ = ray.wait(after, num_returns=len(after), timeout=PREDECESSOR_WAIT_S, fetch_local=False)
    if len(ready) < len(after):
        raise PredecessorFailed(detail=f"{where}: an earlier segment of the stream is not through yet")
    for ref in after:
        try:
            ray.get(ref)
        except ray.exceptions.RayError as exc:
            _refuse_unless_bad_input(exc, where)


async def await_predecessors(after: list | None, where: str) -> None:
    """`require_predecessor` for an asyncio actor, which starts calls as their arguments arrive, so a segment's
    call may come before its predecessor's on the same actor: it waits for them on the event loop, holding
    nothing the predecessor needs, for as long as they take (each one ends, stored or failed)."""
    if not after:
        return
    for outcome in await asyncio.gather(*after, return_exceptions=True):
        if isinstance(outcome, ray.exceptions.RayError):
            _refuse_unless_bad_input(outcome, where)
        elif isinstance(outcome, BaseException):
            raise outcome


def _refuse_unless_bad_input(exc: ray.exceptions.RayError, where: str) -> None:
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(exc.cause, StageError):
        return
    cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) else exc
    raise PredecessorFailed(detail=f"{where}: an earlier segment of the stream failed: "
                            f"{type(cause).__name__}") from None


def settle(ref: Any) -> Any:
    """``ray.get(ref)`` with failures sorted: StageError raised as itself; a dependency away (Ray's own errors,
    or Redis / Kafka / network errors raised in the actor) as DependencyUnavailable; anything else unchanged
    (a crash of our code)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, StageError | DependencyUnavailable):
            raise cause from None
        dependency = dependency_of(cause) if cause is not None else None
        if dependency is None and isinstance(cause, RAY_AWAY):
            dependency = "ray-actor"
        if dependency is not None:
            raise DependencyUnavailable(dependency, f"{type(cause).__name__}: {cause}"[:500]) from None
        raise
    except RAY_AWAY as exc:
        raise DependencyUnavailable("ray-actor", f"{type(exc).__name__}: {exc}"[:500]) from None


def supervised(run, stop: threading.Event, what: str) -> None:
    """Run a loop thread of an actor. The loops recover from errors themselves; should one still end while the
    actor is meant to run, the actor process exits, so that Ray restarts it (max_restarts) instead of keeping
    an actor that answers calls but no longer consumes."""
    try:
        run(stop)
    except BaseException:
        log.exception("%s died; exiting the actor so that Ray restarts it", what)
    if not stop.is_set():
        log.error("%s ended while the actor should run; exiting so that Ray restarts it", what)
        logging.shutdown()
        os._exit(1)
