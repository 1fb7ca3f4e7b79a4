"""The slow path: a second look at rooms the fast path put in YELLOW.

A verifier reads a RiskDecision (its drivers and evidence) and returns a Verdict; RiskEngine.apply turns
a RED verdict into an escalation and a GREEN one into a resolution. Verdicts depend on the decision
alone, so a verifier restarted mid-way that runs a decision again reaches the same verdict, and
RiskEngine.apply ignores a decision it has already had a verdict for: re-running is always safe.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from operators.answer import AnswerResult, EvidenceItem
from operators.moderation.policy import PolicyBook
from operators.moderation.risk import RiskDecision, Verdict

log = logging.getLogger(__name__)

_VERDICT_CACHE = 10_000  # decisions remembered by VlmVerifier: hours of YELLOW rooms at reverify_s = 10
_SNAPSHOT_VERSION = 1


class Verifier(Protocol):
    name: str

    def verify(self, decision: RiskDecision) -> Verdict:
        """The verdict on one decision; the same decision always gets the same verdict."""
        ...


class RuleVerifier:
    """Stricter rules, for when no VLM is configured: confirm (RED) when one detector's evidence persists over
    ``min_frames`` frames in the window, or when ``min_detectors`` detectors agree. Otherwise the room stays
    YELLOW: rules cannot prove a room benign, so clearing is left to its evidence fading (or to a VLM)."""

    name = "rules"

    def __init__(self, policies: PolicyBook):
        self.policies = policies

    def verify(self, decision: RiskDecision) -> Verdict:
        policy = self.policies.policy_for(decision.tenant_id)
        rules = policy.verify
        evidenced = [d for d in decision.drivers if d.hit_frames and d.score >= policy.risk.yellow_exit]
        persistent = [d for d in evidenced if d.hit_frames >= rules.min_frames]
        if persistent:
            best = max(persistent, key=lambda d: d.hit_frames)
            outcome, reason = "RED", f"{best.detector} persisted over {best.hit_frames} frames ({', '.join(best.labels)})"
        elif len(evidenced) >= rules.min_detectors:
            outcome, reason = "RED", f"{len(evidenced)} detectors agree: {', '.join(d.detector for d in evidenced)}"
        else:
            frames = max((d.hit_frames for d in evidenced), default=0)
            outcome, reason = "YELLOW", (f"not confirmed: {frames} evidence frames < {rules.min_frames}, "
                                         f"{len(evidenced)} detectors < {rules.min_detectors}")
        return _verdict(decision, outcome, self.name, reason)


class VlmVerifier:
    """Asks a vision-language model (``answer``, e.g. ``operators.answer.Answerer.answer``) the policy's
    yes/no question about the decision's evidence: yes confirms (RED), no clears (GREEN). An answer that
    starts with neither leaves the room YELLOW and is counted in ``unparseable``.

    evidence_for: the EvidenceItems to show the model for a decision; the default gives each evidence frame's
        time and recognised text without visual tokens. The pipeline passes one that fetches the frames'
        stored tokens from memory, so the model sees the pictures.
    Verdicts are remembered by decision id (and kept by snapshot / restore), so even a model that samples
    gives a re-run decision the verdict it gave first. Errors of the model propagate: the decision is then
    still unjudged, and the caller retries it.
    """

    name = "vlm"

    def __init__(self, answer: Callable[[str, list[EvidenceItem]], AnswerResult], policies: PolicyBook,
                 evidence_for: Callable[[RiskDecision], list[EvidenceItem]] | None = None):
        self.answer = answer
        self.policies = policies
        self.evidence_for = evidence_for or _text_evidence
        self.unparseable = 0
        self._verdicts: OrderedDict[str, Verdict] = OrderedDict()

    def verify(self, decision: RiskDecision) -> Verdict:
        known = self._verdicts.get(decision.decision_id)
        if known is not None:
            return known
        question = self.policies.policy_for(decision.tenant_id).verify.question
        result = self.answer(question, self.evidence_for(decision))
        if result.extractive:
            raise ValueError("the answer stage has no model (extractive answers): use RuleVerifier")
        word = re.match(r"\W*(\w+)", result.text)
        said = word.group(1).lower() if word else ""
        if said in ("yes", "no"):
            verdict = _verdict(decision, "RED" if said == "yes" else "GREEN", self.name,
                               f"{result.model} answered {result.text.strip()[:200]!r}")
        else:
            self.unparseable += 1
            log.warning("VLM verifier: no yes/no in %r for %s", result.text[:200], decision.decision_id)
            verdict = _verdict(decision, "YELLOW", self.name, f"no yes/no in the answer {result.text.strip()[:200]!r}")
        self._verdicts[decision.decision_id] = verdict
        while len(self._verdicts) > _VERDICT_CACHE:
            self._verdicts.popitem(last=False)
        return verdict

    def snapshot(self) -> dict:
        return {"version": _SNAPSHOT_VERSION, "verdicts": [v.model_dump() for v in self._verdicts.values()]}

    def restore(self, state: dict) -> None:
        if state.get("version") != _SNAPSHOT_VERSION:
            raise ValueError(f"verifier snapshot version {state.get('version')!r}, expected {_SNAPSHOT_VERSION}")
        self._verdicts = OrderedDict((v["decision_id"], Verdict.model_validate(v)) for v in state["verdicts"])


def _verdict(decision: RiskDecision, outcome: str, verifier: str, reason: str) -> Verdict:
    return Verdict(decision_id=decision.decision_id, tenant_id=decision.tenant_id, stream_id=decision.stream_id,
                   episode=decision.episode, outcome=outcome, verifier=verifier, reason=reason)


def _text_evidence(decision: RiskDecision) -> list[EvidenceItem]:
    return [EvidenceItem(stream_id=e.stream_id, t_start=e.t_start, t_end=e.t_end,
                         wallclock_start=e.wallclock_start.isoformat(), score=e.score, tokens=None, positions=None,
                         text=e.text)
            for e in decision.evidence]
