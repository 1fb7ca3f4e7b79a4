"""Moderation in the running pipeline: screen every stored segment, keep each room's risk, verify the doubtful.

    Memory write ─► Standing queries ─► ModerationActor (rooms sharded by stream) ─► [alerts topic] + AlertLog
                                             │  YELLOW: ask, never wait               ▲
                                             └──────────► VerifierActor ── verdict ───┘ (applied when it comes)

A room is a stream. Its ModerationActor runs the fast detectors (operators.moderation.detectors) on the
segment's frames (nudenet), on-screen text (lexicon) and, when the policy has prompts, the encoder's index
embeddings (zero-shot), and feeds a RiskEngine of that room. Each decision goes out in this order:
1. its alert is produced to the alerts topic and the broker's acknowledgement awaited, then recorded in the
   AlertLog (idempotent on alert_id and update);
2. the decision is written to the room's audit trail;
3. in one Redis transaction: the room's RiskEngine snapshot, and the decision as a pending verification
   when it asks for one;
4. only then does the call return, so the source commits the segment's offsets after its alerts are
   durable, and verification is requested.
A crash before 3 replays the segment from the last snapshot: the same decisions, the same alert ids.

Moderation runs after the memory write, so an alert's evidence frames (thumbnails, text) can already be read
back when a reviewer opens it.

Verification is asynchronous: the moderator hands the decision to a VerifierActor and goes on scoring the
room; a background thread applies verdicts as they arrive. A pending verification stays in Redis until its
verdict is applied, so a verifier that dies mid-decision is retried by Ray on its restart (or re-asked by the
moderator when the retries run out), and a moderator that restarts re-asks for every pending verification
of its rooms. Verdicts are idempotent (RiskEngine.apply ignores a decision judged before).
"""

from __future__ import annotations

import importlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from contracts import messages
from memory_store import keys
from operators.frames import FrameBatch
from operators.moderation.detectors import (
    DetectorScore,
    LexiconDetector,
    NudityDetector,
    PromptSimilarityDetector,
    SafeDetector,
)
from operators.moderation.policy import ModerationPolicy, PolicyBook
from operators.moderation.risk import RiskDecision, RiskEngine, Verdict
from operators.moderation.verify import RuleVerifier, Verifier, VlmVerifier
from pipelines.clips import alert_with_clip_urls
from pipelines.config import LivelensConfig
from pipelines.moderation.alerts import AlertLog

log = logging.getLogger(__name__)

PENDING_KEY = keys.MODERATION_PENDING  # decision_id -> RiskDecision JSON, every tenant's, until its verdict


@dataclass(frozen=True)
class _Embeddings:
    """What SafeDetector needs of a batch for the zero-shot detector: frame times and index embeddings."""

    pts_s: np.ndarray
    embedding: np.ndarray

    def __len__(self) -> int:
        return len(self.pts_s)


class _PromptsOnEmbeddings:
    """PromptSimilarityDetector on the encoder's index embeddings: no second image pass."""

    name = "prompts"

    def __init__(self, detector: PromptSimilarityDetector):
        self.detector = detector

    def score(self, batch: _Embeddings, texts: None) -> list[DetectorScore]:
        return self.detector.score_embeddings(batch.pts_s, batch.embedding)


class _Screen:
    """The detectors of one policy, each behind a SafeDetector (failures and timeouts: unknown, counted)."""

    def __init__(self, policy: ModerationPolicy, config: LivelensConfig,
                 embed_texts: Callable[[Sequence[str]], np.ndarray] | None):
        timeout = config.moderation.detector_timeout_s
        self.on_frames: list[SafeDetector] = []
        if policy.nudity.enabled:
            self.on_frames.append(SafeDetector(NudityDetector(policy.nudity, config.moderation.nudity_batch_frames),
                                               timeout))
        # The lexicon reads on-screen text (per frame) and what was said (per transcript line: `spoken`).
        self.lexicon: LexiconDetector | None = None
        if policy.lexicon.enabled:
            if not (config.ocr.enabled or config.transcript.enabled):
                raise ValueError(f"policy {policy.version}: lexicon screening reads on-screen text and what was "
                                 "said: enable ocr or transcript")
            embedder = None
            if any(t.semantic for t in policy.lexicon.terms):
                from operators.ocr import TextEmbedder

                embedder = TextEmbedder()
            self.lexicon = LexiconDetector(policy.lexicon, embedder)
            if config.ocr.enabled:
                self.on_frames.append(SafeDetector(self.lexicon, timeout))
        self.prompts: SafeDetector | None = None
        if policy.prompts.enabled:
            if embed_texts is None:
                raise ValueError(f"policy {policy.version}: prompt screening needs an encoder with a text tower")
            detector = PromptSimilarityDetector(policy.prompts, embed_images=_no_images, embed_texts=embed_texts)
            self.prompts = SafeDetector(_PromptsOnEmbeddings(detector), timeout)

    def score(self, frames: FrameBatch, texts: list | None, embedding: Callable[[], np.ndarray],
              transcript=None) -> list[DetectorScore]:
        scores = [s for d in self.on_frames for s in d.score(frames, texts)]
        if self.lexicon is not None and transcript is not None:
            scores += self.lexicon.score_lines(transcript.lines)
        if self.prompts is not None:
            scores += self.prompts.score(_Embeddings(frames.pts_s, embedding()), None)
        return scores

    def detectors(self) -> list[SafeDetector]:
        return self.on_frames + ([self.prompts] if self.prompts else [])


def _no_images(images: np.ndarray) -> np.ndarray:
    raise RuntimeError("the pipeline scores prompts on the encoder's embeddings, never on images")


class Moderator:
    """Screens segments and applies verdicts for the rooms of one shard. Plain class: the actor is a thin wrapper.

    publish: sends alerts to the alerts topic and returns once the broker acknowledged them.
    request_verify: hands a decision to the slow path; must not wait for the verdict.
    embed_texts: the encoder's text tower, for policies with zero-shot prompts.
    """

    def __init__(self, config: LivelensConfig, client: redis.Redis, alerts: AlertLog,
                 publish: Callable[[list[messages.Alert]], None], request_verify: Callable[[RiskDecision], None],
                 *, embed_texts: Callable[[Sequence[str]], np.ndarray] | None = None,
                 owns_room: Callable[[str, str], bool] = lambda tenant, stream: True,
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.policies: PolicyBook = config.moderation.policies()
        self.client = client
        self.alerts = alerts
        self.publish = publish
        self.request_verify = request_verify
        self.owns_room = owns_room
        self.clock = clock
        # Detectors per distinct policy (a tenant without an override shares the default's), built up front so
        # a bad policy fails the actor at start, not a room mid-stream.
        self._screens = {id(p): _Screen(p, config, embed_texts)
                         for p in {id(p): p for p in [self.policies.default, *self.policies.tenants.values()]}.values()}
        self._engines: dict[tuple[str, str], RiskEngine] = {}
        # Screening runs on the actor's thread, verdicts on the collector's: both change rooms.
        self._lock = threading.Lock()
        self.counts = dict(segments=0, frames=0, decisions=0, alerts=0, verdicts=0, verdicts_ignored=0)

    def screen(self, frames: FrameBatch, texts: list | None, embedding: Callable[[], np.ndarray],
               transcript=None) -> list[RiskDecision]:
        """Score one segment's frames (and its transcript lines: operators.transcribe.Transcript), update its
        room, deliver the decisions; returns them."""
        info = frames.segment
        screen = self._screens[id(self.policies.policy_for(info.tenant_id))]
        scores = screen.score(frames, texts, embedding, transcript)
        with self._lock:
            engine = self._engine(info.tenant_id, info.stream_id)
            decisions = engine.observe(info, scores)
            self._deliver(info.tenant_id, info.stream_id, engine, decisions)
            self.counts["segments"] += 1
            self.counts["frames"] += len(frames)
        return decisions

    def apply(self, verdict: Verdict) -> RiskDecision | None:
        """Feed a verdict into its room; deliver what it changes and clear the pending verification."""
        with self._lock:
            engine = self._engine(verdict.tenant_id, verdict.stream_id)
            decision = engine.apply(verdict)
            self.counts["verdicts"] += 1
            self.counts["verdicts_ignored"] += decision is None
            audit = {"event": "verdict", "decision_id": verdict.decision_id, "outcome": verdict.outcome,
                     "verifier": verdict.verifier, "reason": verdict.reason, "episode": verdict.episode,
                     "changed": None if decision is None else decision.decision_id}
            self._deliver(verdict.tenant_id, verdict.stream_id, engine, [decision] if decision else [],
                          audit_first=audit, verdict_of=verdict.decision_id)
        return decision

    def pending(self) -> list[RiskDecision]:
        """Verifications asked for and not yet applied, of this shard's rooms."""
        out = [RiskDecision.model_validate_json(raw) for raw in self.client.hvals(PENDING_KEY)]
        return sorted((d for d in out if self.owns_room(d.tenant_id, d.stream_id)), key=lambda d: d.decision_id)

    def state(self, tenant_id: str, stream_id: str) -> str:
        with self._lock:
            return self._engine(tenant_id, stream_id).state(tenant_id, stream_id)

    def health(self) -> dict[str, dict]:
        """Per detector: batches, failures, timeouts, skipped while busy, the last error (summed over policies)."""
        out: dict[str, dict] = {}
        for screen in self._screens.values():
            for d in screen.detectors():
                h = out.setdefault(d.name, dict(batches=0, failures=0, timeouts=0, skipped_busy=0, last_error=""))
                for field in ("batches", "failures", "timeouts", "skipped_busy"):
                    h[field] += getattr(d.health, field)
                h["last_error"] = d.health.last_error or h["last_error"]
        return out

    def _engine(self, tenant_id: str, stream_id: str) -> RiskEngine:
        """The room's engine: in memory, else restored from its last snapshot, else new (GREEN)."""
        key = (tenant_id, stream_id)
        engine = self._engines.get(key)
        if engine is None:
            engine = RiskEngine(self.policies, clock=self.clock)
            stored = self.client.get(keys.moderation_room(tenant_id, stream_id))
            if stored:
                engine.restore(json.loads(stored))
            self._engines[key] = engine
        return engine

    def _deliver(self, tenant_id: str, stream_id: str, engine: RiskEngine, decisions: list[RiskDecision], *,
                 audit_first: dict | None = None, verdict_of: str | None = None) -> None:
        try:
            alerts = [alert_with_clip_urls(self.config, d.to_alert()) for d in decisions if d.event != "reverify"]
            if alerts:
                self.publish(alerts)
                for alert in alerts:
                    self.alerts.record(alert)
            if audit_first is not None:
                self.alerts.audit(tenant_id, stream_id, audit_first)
            for d in decisions:
                self.alerts.audit(tenant_id, stream_id, _audit_event(d))
            to_verify = [d for d in decisions if d.verify]
            with self.client.pipeline(transaction=True) as pipe:
                pipe.set(keys.moderation_room(tenant_id, stream_id), json.dumps(engine.snapshot()))
                for d in to_verify:
                    pipe.hset(PENDING_KEY, d.decision_id, d.model_dump_json())
                if verdict_of is not None:
                    pipe.hdel(PENDING_KEY, verdict_of)
                pipe.execute()
        except Exception:
            # The engine has moved past what is stored: forget it, so the retry (the segment replayed, the
            # verdict asked again) starts from the last snapshot and makes the same decisions again.
            self._engines.pop((tenant_id, stream_id), None)
            raise
        self.counts["decisions"] += len(decisions)
        self.counts["alerts"] += len(alerts)
        for d in to_verify:
            self.request_verify(d)


def _audit_event(d: RiskDecision) -> dict[str, Any]:
    return {
        "event": d.event, "decision_id": d.decision_id, "episode": d.episode, "previous": d.previous,
        "state": d.state, "score": d.score, "reason": d.reason, "pts_s": d.pts_s, "policy_version": d.policy_version,
        "drivers": [dr.model_dump() for dr in d.drivers], "verify": d.verify, "actions": list(d.actions),
        "evidence": [{"frame_key": e.frame_key, "t_start": e.t_start, "t_end": e.t_end, "text": e.text}
                     for e in d.evidence],
        "stream_latency_s": d.stream_latency_s, "latency_s": d.latency_s, "degraded": list(d.degraded),
    }


def build_verifier(config: LivelensConfig) -> Verifier:
    """The verifier ``moderation.verifier`` names (see its description)."""
    policies = config.moderation.policies()
    kind = config.moderation.verifier
    if kind == "auto":
        kind = "vlm" if config.answer.model else "rules"
    if kind == "rules":
        return RuleVerifier(policies)
    if kind == "vlm":
        if not config.answer.model:
            raise ValueError("moderation.verifier = vlm needs answer.model")
        from operators.answer import Answerer
        from pipelines.models import answer_model

        return VlmVerifier(Answerer(config.answer, answer_model(config)).answer, policies)
    module, sep, attr = kind.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"moderation.verifier {kind!r}: expected auto, rules, vlm or module:attr")
    return getattr(importlib.import_module(module), attr)(policies, config)
