"""Verifiers: rules, a VLM's yes/no, and idempotence through the risk engine across a verifier restart."""

from __future__ import annotations

import pickle

import pytest

from operators.answer import AnswerResult
from operators.moderation.detectors import DetectorScore
from operators.moderation.risk import RiskEngine
from operators.moderation.verify import RuleVerifier, VlmVerifier
from tests.operators.moderation.rooms import policy_book, segment


def yellow_room(scores: list[float], detectors: tuple[str, ...] = ("a",)):
    engine = RiskEngine(policy_book(slot_s=1, window_s=30, top_k=2, reverify_s=100), clock=lambda: 0.0)
    decisions = []
    for t, s in enumerate(scores):
        decisions += engine.observe(segment(t, 1), [DetectorScore(d, float(t), s, ("x",)) for d in detectors])
    return engine, [d for d in decisions if d.verify][-1]


@pytest.mark.parametrize("scores, detectors, outcome", [
    ([0.6, 0.6], ("a",), "YELLOW"),  # two frames, one detector: not enough
    ([0.6, 0.6, 0.6, 0.6], ("a",), "YELLOW"),  # asked at YELLOW entry, before the evidence persisted
    ([0.6, 0.6], ("a", "b"), "RED"),  # two detectors agree
])
def test_rule_verifier(scores, detectors, outcome):
    _, decision = yellow_room(scores, detectors)
    assert RuleVerifier(policy_book()).verify(decision).outcome == outcome


def test_rule_verifier_confirms_persistent_evidence_on_reverify():
    engine = RiskEngine(policy_book(slot_s=1, window_s=30, top_k=2, reverify_s=3), clock=lambda: 0.0)
    decisions = []
    for t in range(5):
        decisions += engine.observe(segment(t, 1), [DetectorScore("a", float(t), 0.6, ("x",))])
    assert [d.event for d in decisions] == ["alert", "reverify"]
    verdict = RuleVerifier(policy_book()).verify(decisions[1])
    assert verdict.outcome == "RED" and "persisted over 5 frames" in verdict.reason
    escalation = engine.apply(verdict)
    assert escalation.event == "escalate" and escalation.state == "RED" and "confirmed by rules" in escalation.reason


class ScriptedAnswerer:
    """Stands in for operators.answer.Answerer.answer: replies from a script, counting calls."""

    def __init__(self, *replies: str):
        self.replies = list(replies)
        self.calls = 0

    def __call__(self, question, evidence):
        self.calls += 1
        return AnswerResult(text=self.replies.pop(0), extractive=False, model="tiny-vlm", evidence_used=len(evidence))


@pytest.mark.parametrize("reply, outcome", [("Yes, frame 3 shows it.", "RED"), ("no.", "GREEN"),
                                            ("I cannot tell", "YELLOW")])
def test_vlm_verdict(reply, outcome):
    _, decision = yellow_room([0.6, 0.6])
    verifier = VlmVerifier(ScriptedAnswerer(reply), policy_book())
    assert verifier.verify(decision).outcome == outcome
    assert verifier.unparseable == (outcome == "YELLOW")


def test_vlm_refuses_extractive_answers():
    _, decision = yellow_room([0.6, 0.6])

    def extractive(question, evidence):
        return AnswerResult(text="Evidence: ...", extractive=True, model="", evidence_used=0)

    with pytest.raises(ValueError, match="RuleVerifier"):
        VlmVerifier(extractive, policy_book()).verify(decision)


def test_clear_verdict_resolves_and_holds_the_cleared_labels():
    engine, decision = yellow_room([0.6, 0.6])
    resolution = engine.apply(VlmVerifier(ScriptedAnswerer("no"), policy_book()).verify(decision))
    assert resolution.event == "resolve" and engine.state("t1", "room-1") == "GREEN"
    for t in range(2, 10):  # the same benign sight goes on: ignored for verdict_hold_s
        assert engine.observe(segment(t, 1), [DetectorScore("a", float(t), 0.6, ("x",))]) == []
    assert engine.observe(segment(10, 1), [DetectorScore("a", 10.0, 0.9, ("y",))]) == []  # one new label: half
    (alert,) = engine.observe(segment(11, 1), [DetectorScore("a", 11.0, 0.9, ("y",))])
    assert alert.episode == 2 and alert.drivers[0].labels == ("y",)


def test_restarted_verifier_reaches_the_same_outcome_once():
    """The verifier dies after the engine applied its verdict but before it acknowledged the decision: a new
    verifier runs the same decision again on a restored engine and on the live one; the outcome is the
    same, and applying it twice changes nothing."""
    engine, decision = yellow_room([0.6, 0.6])
    before = pickle.dumps(engine.snapshot())
    first = VlmVerifier(ScriptedAnswerer("yes"), policy_book())
    escalation = engine.apply(first.verify(decision))
    assert escalation.state == "RED"
    saved = first.snapshot()
    restarted = VlmVerifier(ScriptedAnswerer("no"), policy_book())  # would now say otherwise...
    restarted.restore(saved)
    again = restarted.verify(decision)  # ...but remembers its verdict by decision id
    assert again == first.verify(decision) and restarted.answer.calls == 0
    assert engine.apply(again) is None and engine.state("t1", "room-1") == "RED"
    replayed = RiskEngine(policy_book(slot_s=1, window_s=30, top_k=2, reverify_s=100), clock=lambda: 0.0)
    replayed.restore(pickle.loads(before))
    assert replayed.apply(again) == escalation
    assert replayed.snapshot() == engine.snapshot()


def test_verdict_for_an_ended_episode_is_ignored():
    engine, decision = yellow_room([0.6, 0.6] + [0.0] * 40)
    assert engine.state("t1", "room-1") == "GREEN"
    assert engine.apply(RuleVerifier(policy_book()).verify(decision)) is None
