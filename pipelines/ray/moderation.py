"""The moderation actors: one per shard of rooms over `Moderator`, and the verifier (the slow path).

The moderator and its rules are in pipelines/moderation/; this module only places them in actors, asks the
verifier, and retries a verification that raised.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import ray

from contracts import messages
from operators.frames import FrameBatch
from operators.moderation.risk import RiskDecision, Verdict
from pipelines import metrics
from pipelines.config import LivelensConfig
from pipelines.kafka.client import make_producer
from pipelines.moderation.alerts import AlertLog
from pipelines.moderation.moderator import Moderator, build_verifier
from pipelines.ray.placement import shard
from pipelines.ray.runtime import setup_logging
from pipelines.ray.supervision import require_predecessor
from pipelines.redis_io import redis_client

log = logging.getLogger(__name__)

VERIFY_ATTEMPTS = 5  # asks per decision when the verifier keeps raising (not dying: Ray retries those itself)
_RETRY_S = 1.0


@ray.remote(max_restarts=-1, max_task_retries=-1)
class VerifierActor:
    """The slow path. Ray restarts it when it dies and re-runs the decisions it had in hand (verdicts depend on
    the decision alone, so a re-run reaches the same verdict)."""

    def __init__(self, config: LivelensConfig):
        metrics.configure(config.metrics)
        self.verifier = build_verifier(config)
        self.verified = 0

    def verify(self, decision: RiskDecision) -> Verdict:
        verdict = self.verifier.verify(decision)
        self.verified += 1
        return verdict

    def name(self) -> str:
        return self.verifier.name


@ray.remote(max_restarts=-1, max_task_retries=3)
class ModerationActor:
    """One shard of rooms. A sync actor: one submitter's calls run in order, so a room's segments arrive in
    stream order (the RiskEngine ignores frames older than the newest it has seen)."""

    def __init__(self, config: LivelensConfig, shard_index: int, verifiers: list):
        metrics.configure(config.metrics)
        setup_logging()
        shards = config.moderation.moderators
        client = redis_client(config.redis)
        self.config = config
        self.producer = make_producer(config.kafka)
        self.verifiers = verifiers
        self._outstanding: dict[ray.ObjectRef, tuple[RiskDecision, int]] = {}
        self._retry: list[tuple[float, RiskDecision, int]] = []
        self._lock = threading.Lock()
        self.verify_failures = 0
        self.moderator = Moderator(
            config, client, AlertLog(client), self._publish, self._ask,
            embed_texts=self._embed_texts if _has_prompts(config) else None,
            owns_room=lambda tenant, stream: shard(f"{tenant}/{stream}", shards) == shard_index)
        self._stop = threading.Event()
        self._collector = threading.Thread(target=self._collect, name="verdicts", daemon=True)
        self._collector.start()
        for decision in self.moderator.pending():  # asked for before a restart, never applied
            self._ask(decision)

    def screen(self, written, frames: FrameBatch, texts: list | None, batch: list, transcript=None,
               after: list | None = None):
        """Moderate one stored segment; returns ``written`` (the memory write's result) for the source.
        ``batch``: [the segment's CompressedBatch ref], fetched only when a policy scores prompts;
        ``transcript``: its transcript lines, screened by the lexicon too; ``after``: the screenings of the room's
        earlier segments in flight. One that failed (this actor was restarted under it) is retried first: the
        RiskEngine ignores frames older than the newest it has seen, so screening this one now would lose it."""
        require_predecessor(after, "moderation")
        self.moderator.screen(frames, texts, lambda: ray.get(batch[0]).embedding, transcript)
        return written

    def stats(self) -> dict[str, Any]:
        with self._lock:
            outstanding = len(self._outstanding) + len(self._retry)
        return {**self.moderator.counts, "verify_outstanding": outstanding, "verify_failures": self.verify_failures,
                "detectors": self.moderator.health()}

    def room_state(self, tenant_id: str, stream_id: str) -> str:
        return self.moderator.state(tenant_id, stream_id)

    def _publish(self, alerts: list[messages.Alert]) -> None:
        kafka = self.config.kafka  # each alert on its tenant's topic when kafka.tenant_topics is on
        futures = [self.producer.send(kafka.topic("alerts", a.tenant_id), key=a.stream_id.encode(),
                                      value=messages.encode(a)) for a in alerts]
        for future in futures:
            future.get(timeout=30)

    def _embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        encoder = ray.get_actor("encode-0", namespace=self.config.ray.namespace)
        return np.asarray(ray.get(encoder.embed_text.remote(list(texts))), np.float32)

    def _ask(self, decision: RiskDecision, attempt: int = 1) -> None:
        verifier = self.verifiers[shard(decision.decision_id, len(self.verifiers))]
        with self._lock:
            self._outstanding[verifier.verify.remote(decision)] = (decision, attempt)

    def _collect(self) -> None:
        """Apply verdicts as they come; ask again (after a pause) when a verifier raised or a delivery failed."""
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                due = [r for r in self._retry if r[0] <= now]
                self._retry = [r for r in self._retry if r[0] > now]
                refs = list(self._outstanding)
            for _, decision, attempt in due:
                self._ask(decision, attempt)
            if not refs:
                self._stop.wait(0.05)
                continue
            ready, _ = ray.wait(refs, num_returns=1, timeout=0.2)
            for ref in ready:
                with self._lock:
                    decision, attempt = self._outstanding.pop(ref)
                try:
                    self.moderator.apply(ray.get(ref))
                except Exception as exc:  # the verifier raised, or the verdict's alert could not be delivered
                    self.verify_failures += 1
                    log.warning("verification of %s failed (attempt %d): %s", decision.decision_id, attempt, exc)
                    self.moderator.alerts.audit(decision.tenant_id, decision.stream_id, {
                        "event": "verify_failed", "decision_id": decision.decision_id, "attempt": attempt,
                        "error": f"{type(exc).__name__}: {exc}"[:1000]})
                    if attempt < VERIFY_ATTEMPTS:
                        with self._lock:
                            self._retry.append((time.monotonic() + _RETRY_S * attempt, decision, attempt + 1))
                    # else it stays pending in Redis (the room stays YELLOW, which is safe) and is asked
                    # again when this actor restarts


def _has_prompts(config: LivelensConfig) -> bool:
    book = config.moderation.policies()
    return any(p.prompts.enabled for p in [book.default, *book.tenants.values()])


def start_moderation(config: LivelensConfig, named: Callable[..., Any]) -> tuple[list, list]:
    """(moderators, verifiers) when moderation is enabled, else two empty lists. ``named(cls, name, *args)``
    creates or finds a named actor (pipelines.ray.dag)."""
    if not config.moderation.enabled:
        return [], []
    verifiers = [named(VerifierActor, "verify-0", config)]
    return [named(ModerationActor, f"moderate-{i}", config, i, verifiers)
            for i in range(config.moderation.moderators)], verifiers
