"""RiskEngine: hysteresis, immediate RED, rooms with inserted events, a benign hour, snapshot / restore."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

from operators.moderation.detectors import (
    DetectorScore,
    LexiconDetector,
    SafeDetector,
    screen,
)
from operators.moderation.risk import RiskDecision, RiskEngine
from tests.operators.moderation.rooms import (
    Inserted,
    policy_book,
    segment,
    text_batches,
    texts,
)

EPOCH = 1_700_000_000.0


class StreamClock:
    """Wall clock of a room replayed faster than real time: 0.2 s of processing after the frame last fed."""

    def __init__(self):
        self.now = EPOCH

    def __call__(self) -> float:
        return self.now + 0.2


def drive(engine: RiskEngine, scores: list[float], detector: str = "fake") -> list[str]:
    """Feed one score per second; the room's state after each."""
    states = []
    for t, s in enumerate(scores):
        engine.observe(segment(t, 1), [DetectorScore(detector, float(t), s, ("x",))])
        states.append(engine.state("t1", "room-1")[0])
    return states


@pytest.mark.parametrize("scores, expected", [
    ([0.1, 0.6, 0.4, 0.4, 0.2, 0.2], "GYYYGG"),  # enter at 0.5, leave below 0.3 once dwelt 2 s
    ([0.55, 0.45, 0.55, 0.45, 0.55, 0.45], "YYYYYY"),  # hovering around yellow_enter does not flap
    ([0.6, 0.1, 0.1, 0.1], "YYGG"),  # the dwell holds YELLOW for 2 s however low the score
    ([0.9, 0.7, 0.5, 0.5, 0.5, 0.1], "RRYYYG"),  # RED holds above red_exit, steps down to YELLOW, then GREEN
    ([0.2, 0.95, 0.2, 0.2, 0.2], "GRRGG"),  # straight to RED and back: going up is never delayed
    ([0.6, 0.9, 0.1, 0.1, 0.1], "YRRGG"),  # escalation
    ([0.6, 0.4, 0.25, 0.6, 0.1, 0.1], "YYGYYG"),  # a new episode after resolution
])
def test_hysteresis(scores, expected):
    engine = RiskEngine(policy_book(slot_s=1, window_s=1, top_k=1, min_dwell_s=2))
    assert "".join(drive(engine, scores)) == expected


def test_top_k_pooling_keeps_one_bad_second_among_many():
    engine = RiskEngine(policy_book(slot_s=1, window_s=60, top_k=2, min_dwell_s=2))
    states = drive(engine, [0.0] * 50 + [0.9, 0.9] + [0.0] * 20)
    assert states[49] == "G" and states[50] == "G"  # one bad second counts half: 0.45 < yellow_enter
    assert states[51] == "R"  # the second makes the mean of the top two 0.9
    assert states[-1] == "R"  # still in the window, 20 s later
    assert states.count("G") == 51


def test_decisions_of_an_episode():
    engine = RiskEngine(policy_book(slot_s=1, window_s=1, top_k=1, min_dwell_s=2, reverify_s=2), clock=lambda: EPOCH)
    decisions: list[RiskDecision] = []
    for t, s in enumerate([0.6, 0.6, 0.6, 0.9, 0.7, 0.5, 0.5, 0.1, 0.1]):
        decisions += engine.observe(segment(t, 1), [DetectorScore("fake", float(t), s, ("x",))])
    assert [(d.event, d.state) for d in decisions] == [
        ("alert", "YELLOW"), ("reverify", "YELLOW"), ("escalate", "RED"), ("deescalate", "YELLOW"),
        ("resolve", "GREEN")]
    assert [d.decision_id for d in decisions] == [f"t1/room-1/1/{n}" for n in range(5)]
    assert [d.verify for d in decisions] == [True, True, False, True, False]
    alert = decisions[0]
    assert alert.policy_version == "test-7" and alert.drivers[0].detector == "fake"
    assert alert.evidence[0].frame_key == "t1/room-1/0/0" and alert.first_evidence_pts == 0.0
    assert alert.latency_s == 0.0 and alert.actions == ("verify", "notify_moderators")
    assert alert.to_alert().state == "YELLOW"


def test_red_term_goes_red_at_once_and_stays_latched():
    engine = RiskEngine(policy_book(slot_s=1, window_s=5, top_k=2, min_dwell_s=2))
    red = DetectorScore("lexicon", 3.0, 1.0, ("term:cocaine",), text="COCAINE", severity="RED")
    before = engine.observe(segment(0, 3), [DetectorScore("lexicon", float(t), 0.0) for t in range(3)])
    (decision,) = engine.observe(segment(3, 1), [red])
    assert not before and decision.event == "alert" and decision.state == "RED"
    assert decision.stream_latency_s == 0.0 and decision.evidence[0].text == "COCAINE"
    # latched: one frame pooled is 0.5 < red_exit, yet the room stays RED (not YELLOW) until that frame leaves
    # the 5 s window (slots 3..7), then resolves
    states = []
    for t in range(4, 10):
        engine.observe(segment(t, 1), [DetectorScore("lexicon", float(t), 0.0)])
        states.append(engine.state("t1", "room-1"))
    assert states == ["RED", "RED", "RED", "RED", "GREEN", "GREEN"]


def run_room(frame_texts, engine: RiskEngine, detector, clock: StreamClock | None = None) -> list[RiskDecision]:
    decisions = []
    for frames, chunk in text_batches(frame_texts):
        if clock is not None:
            clock.now = EPOCH + float(frames.pts_s[-1])
        decisions += engine.observe(frames.segment, screen([detector], frames, chunk))
    return decisions


EVENTS = [Inserted("CALL 555-0142 NOW", 100, 6), Inserted("BEST COCAINE IN TOWN", 300, 4),
          Inserted("TIPS: paypal.me/streamer99", 500, 5), Inserted("C0CAINE DEALS", 700, 3),
          Inserted("please send money to me", 900, 8)]


@pytest.fixture(scope="module")
def lexicon(embedder) -> LexiconDetector:
    return LexiconDetector(policy_book().default.lexicon, embedder)


def test_room_alerts_on_every_inserted_event(lexicon):
    clock = StreamClock()
    engine = RiskEngine(policy_book(), clock=clock)
    decisions = run_room(texts(1100, EVENTS), engine, SafeDetector(lexicon, timeout_s=5), clock)
    alerts = [d for d in decisions if d.event == "alert"]
    assert len(alerts) == len(EVENTS)  # one alert per episode, one episode per event
    expected_state = ["YELLOW", "RED", "RED", "RED", "YELLOW"]
    for event, alert, state in zip(EVENTS, alerts, expected_state):
        assert alert.state == state
        # RED terms at once; YELLOW needs a second frame (top_k = 2); both within 3 s of stream time
        assert event.start_s <= alert.pts_s < event.start_s + (1 if state == "RED" else 3)
        assert alert.first_evidence_pts == event.start_s
        assert all(event.start_s <= e.t_start <= e.t_end < event.start_s + event.seconds for e in alert.evidence)
        assert any(event.text in e.text for e in alert.evidence)
        # decided when its 2-frame segment is in: wall clock at that segment's last frame, plus processing
        assert alert.latency_s == pytest.approx(alert.pts_s // 2 * 2 + 1 - event.start_s + 0.2, abs=1e-3)
    resolved = [d for d in decisions if d.event == "resolve"]
    assert len(resolved) == len(EVENTS) and engine.state("t1", "room-1") == "GREEN"
    labels = [alert.drivers[0].labels for alert in alerts]
    assert labels == [("phone_number",), ("term:cocaine",), ("payment_handle",), ("term~cocaine",),
                      ("semantic:send me money",)]


def test_benign_hour_raises_nothing(lexicon):
    engine = RiskEngine(policy_book())
    detector = SafeDetector(lexicon, timeout_s=5)
    assert run_room(texts(3600, [], rotate_s=20), engine, detector) == []
    assert detector.health.failures == detector.health.timeouts == 0


def test_snapshot_restore_mid_episode_continues_identically(lexicon):
    frame_texts = texts(400, EVENTS[:2])
    whole = run_room(frame_texts, RiskEngine(policy_book(), clock=lambda: EPOCH), lexicon)
    first = RiskEngine(policy_book(), clock=lambda: EPOCH)
    head = run_room(frame_texts[:302], first, lexicon)  # mid-way through the cocaine episode
    assert first.state("t1", "room-1") == "RED"
    second = RiskEngine(policy_book(), clock=lambda: EPOCH)
    second.restore(pickle.loads(pickle.dumps(first.snapshot())))
    tail = run_room(frame_texts[302:], second, lexicon)
    assert head + tail == whole
    assert second.snapshot() == pickle.loads(pickle.dumps(second.snapshot()))


def test_replayed_segment_is_not_counted_twice():
    engine = RiskEngine(policy_book(slot_s=1, window_s=10, top_k=2))
    score = [DetectorScore("fake", 0.0, 0.6, ("x",))]
    assert engine.observe(segment(0, 1), score) == []
    assert engine.observe(segment(0, 1), score) == []  # at-least-once redelivery: the same frame again
    assert engine.state("t1", "room-1") == "GREEN"


class FlakyLexicon(LexiconDetector):
    """The real lexicon detector, failing on every batch that starts in [40, 60) s."""

    def score(self, frames, texts):
        if 40 <= frames.pts_s[0] < 60:
            raise RuntimeError("model server went away")
        return super().score(frames, texts)


def test_detector_failure_degrades_to_unknown_and_scoring_continues(embedder):
    flaky = SafeDetector(FlakyLexicon(policy_book().default.lexicon, embedder), timeout_s=5)
    engine = RiskEngine(policy_book())
    events = [Inserted("CALL 555-0142 NOW", 45, 5), Inserted("BEST COCAINE IN TOWN", 80, 3)]
    decisions = run_room(texts(120, events), engine, flaky)
    assert flaky.health.failures == 10 and "model server went away" in flaky.health.last_error
    assert engine.snapshot()["rooms"][0]["unknown_frames"] == {"lexicon": 20}
    (alert,) = [d for d in decisions if d.event == "alert"]  # the phone number fell in the blind spell
    assert alert.state == "RED" and alert.first_evidence_pts == 80 and alert.degraded == ("lexicon",)


def test_text_the_live_reader_did_not_read_is_unknown_to_the_lexicon_not_clean(embedder):
    """ocr.max_lag_s: while the live OCR reader was behind it left frames unread. A risky headline shown
    then was not seen; the decisions must say the lexicon was blind (degraded), not that the text was clean."""
    lexicon = LexiconDetector(policy_book().default.lexicon, embedder)
    engine = RiskEngine(policy_book())
    events = [Inserted("CALL 555-0142 NOW", 45, 5), Inserted("BEST COCAINE IN TOWN", 80, 3)]
    frame_texts = [dataclasses.replace(t, lines=[], embedding=None, reused=False, unread=True)
                   if 40 <= t.pts_s < 60 else t for t in texts(120, events)]
    decisions = run_room(frame_texts, engine, lexicon)
    assert engine.snapshot()["rooms"][0]["unknown_frames"] == {"lexicon": 20}
    (alert,) = [d for d in decisions if d.event == "alert"]  # the phone number was on screen, unread
    assert alert.state == "RED" and alert.first_evidence_pts == 80 and alert.degraded == ("lexicon",)


def test_unknown_is_not_zero():
    """A detector that cannot score is left out of pooling: it neither raises nor lowers the room's score."""
    engine = RiskEngine(policy_book(slot_s=1, window_s=10, top_k=1))
    engine.observe(segment(0, 1), [DetectorScore("a", 0.0, 0.7, ("x",))])
    engine.observe(segment(1, 1), [DetectorScore("a", 1.0, None, error="timeout")])
    assert engine.state("t1", "room-1") == "YELLOW"
    assert np.isclose(engine.snapshot()["rooms"][0]["unknown_frames"]["a"], 1)
