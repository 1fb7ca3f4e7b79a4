"""Room risk: pool detector scores over time per (tenant, stream) and decide GREEN / YELLOW / RED.

A room is a bag of time-slot instances (the shape of AC-MIL, without its trained weights): each detector
keeps the best frame of every ``slot_s`` slot, and its room-level score is the mean of its ``top_k`` best
slots in the last ``window_s``. A mean over all slots would let one bad second vanish among an hour of
benign ones; top-k keeps it, and k > 1 keeps one misfiring frame from raising an alert alone. The room's
score is the highest detector score.

States change with hysteresis, so a room hovering near a threshold does not flap:
- up at once: GREEN -> YELLOW at ``yellow_enter``, any -> RED at ``red_enter``, and any -> RED on a
  RED-severity hit (a banned term on screen needs no pooling);
- down only after ``min_dwell_s`` in the state: RED -> YELLOW below ``red_exit``, -> GREEN below
  ``yellow_exit``. A RED entered on a RED hit or confirmed by a verifier is *latched*: it ends only when
  the evidence is gone (below ``yellow_exit``), never by sliding back to YELLOW.

Entering YELLOW asks for verification (the slow path, operators.moderation.verify), again every
``reverify_s`` while the room stays YELLOW; ``apply(verdict)`` feeds the answer back in.

An episode runs from leaving GREEN to returning to it: one ``alert`` opens it, ``escalate`` /
``deescalate`` update it, one ``resolve`` closes it. Decision ids are ``tenant/stream/episode/n``, the
same on a replay, which is what makes verification idempotent.

Frames at or before the last one a room saw are ignored: Kafka delivers at least once, and a replayed
segment must not count its evidence twice.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from contracts.messages import Alert, AlertDriver, Evidence
from operators.frames import SegmentInfo
from operators.moderation.detectors import DetectorScore
from operators.moderation.policy import (
    ModerationPolicy,
    PolicyBook,
    RiskState,
    Severity,
)

RoomKey = tuple[str, str]  # (tenant_id, stream_id)
Event = Literal["alert", "escalate", "deescalate", "resolve", "reverify"]
_SNAPSHOT_VERSION = 1


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Driver(_Frozen):
    """A detector that drove a decision: its pooled score, what it saw, on how many frames in the window."""

    detector: str
    score: float
    labels: tuple[str, ...]
    hit_frames: int


class RiskDecision(_Frozen):
    """A room's state change (or a renewed request for verification).

    pts_s: stream time of the frame on which it was decided.
    first_evidence_pts: stream time of the earliest evidence frame behind it (None for a resolution).
    stream_latency_s: pts_s - first_evidence_pts: how much stream time the decision took to gather.
    latency_s: wall-clock seconds from that frame's capture to the decision (what a viewer waits).
    verify: True when the slow path should look (entering YELLOW, and ``reverify``).
    degraded: detectors that could not score some frames in the window: the decision was made without them.
    """

    decision_id: str
    tenant_id: str
    stream_id: str
    episode: int
    event: Event
    previous: RiskState
    state: RiskState
    score: float
    reason: str
    drivers: tuple[Driver, ...]
    evidence: tuple[Evidence, ...]
    verify: bool
    actions: tuple[str, ...]
    policy_version: str
    pts_s: float
    first_evidence_pts: float | None
    stream_latency_s: float | None
    latency_s: float | None
    degraded: tuple[str, ...]

    def to_alert(self) -> Alert:
        """The alerts-topic message for this decision: the episode's alert_id, ``update`` the decision's n.
        The same decision (a replay) gives the same message."""
        if self.event == "reverify":
            raise ValueError(f"{self.decision_id} asks for verification again: it changes no alert")
        return Alert(
            tenant_id=self.tenant_id, stream_id=self.stream_id,
            alert_id=episode_alert_id(self.tenant_id, self.stream_id, self.episode),
            state=self.state, score=self.score, reason=self.reason, evidence=list(self.evidence), event=self.event,
            episode=self.episode, update=int(self.decision_id.rsplit("/", 1)[1]),
            drivers=[AlertDriver(detector=d.detector, score=d.score, labels=list(d.labels), hit_frames=d.hit_frames)
                     for d in self.drivers],
            policy_version=self.policy_version, actions=list(self.actions), pts_s=self.pts_s,
            stream_latency_s=self.stream_latency_s, latency_s=self.latency_s, degraded=list(self.degraded))


def episode_alert_id(tenant_id: str, stream_id: str, episode: int) -> str:
    """One alert id per episode of a room, the same on every replay; a hash, since tenant and stream ids
    together may be longer than an id may be."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"livelens:moderation/{tenant_id}/{stream_id}/{episode}").hex


class Verdict(_Frozen):
    """The slow path's answer to a decision: RED confirms, GREEN clears, YELLOW leaves the room as it is."""

    decision_id: str
    tenant_id: str
    stream_id: str
    episode: int
    outcome: RiskState
    verifier: str
    reason: str


@dataclass
class _Hit:
    """A detector's best frame in one slot, and the span of the slot's evidence frames (score >= yellow_exit)."""

    score: float
    pts_s: float
    frame_key: str
    segment_seq: int
    wallclock: float
    labels: tuple[str, ...]
    text: str
    severity: Severity | None
    frames: int = 0  # evidence frames
    first_pts: float | None = None
    last_pts: float | None = None
    first_wallclock: float | None = None


@dataclass
class _Slot:
    hits: dict[str, _Hit] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)


@dataclass
class _Room:
    state: RiskState = "GREEN"
    since_pts: float = -math.inf
    episode: int = 0
    decisions: int = 0  # in this episode: the n of the next decision id
    latched: bool = False
    last_pts: float = -math.inf
    last_verify_pts: float = -math.inf
    slots: dict[int, _Slot] = field(default_factory=dict)
    suppressed: dict[tuple[str, str], float] = field(default_factory=dict)  # (detector, label) -> until pts
    verdicts: list[str] = field(default_factory=list)  # decision ids of this episode already judged
    unknown_frames: dict[str, int] = field(default_factory=dict)  # frames each detector could not score


_ROOM_SCALARS = ("state", "since_pts", "episode", "decisions", "latched", "last_pts", "last_verify_pts")


class RiskEngine:
    """The rooms' risk state machines. Plain state, explicit snapshot() / restore().

    clock: epoch seconds now, for ``latency_s``; injected so tests and replays are deterministic.
    """

    def __init__(self, policies: PolicyBook, clock: Callable[[], float] = time.time):
        self.policies = policies
        self.clock = clock
        self._rooms: dict[RoomKey, _Room] = {}

    def state(self, tenant_id: str, stream_id: str) -> RiskState:
        room = self._rooms.get((tenant_id, stream_id))
        return "GREEN" if room is None else room.state

    def observe(self, segment: SegmentInfo, scores: Sequence[DetectorScore]) -> list[RiskDecision]:
        """Take every detector's scores for the frames of one segment; return the decisions they cause."""
        key = (segment.tenant_id, segment.stream_id)
        room = self._rooms.setdefault(key, _Room())
        policy = self.policies.policy_for(segment.tenant_id)
        by_pts: dict[float, list[DetectorScore]] = defaultdict(list)
        for s in scores:
            by_pts[s.pts_s].append(s)
        decisions = []
        for pts_s in sorted(by_pts):
            if pts_s <= room.last_pts:
                continue
            room.last_pts = pts_s
            red_hit = self._add_frame(room, policy, segment, pts_s, by_pts[pts_s])
            decision = self._step(key, room, policy, red_hit)
            if decision is not None:
                decisions.append(decision)
        return decisions

    def apply(self, verdict: Verdict) -> RiskDecision | None:
        """Feed a verdict back in. Idempotent: a decision judged before, or one from an episode that has
        ended, changes nothing (None)."""
        key = (verdict.tenant_id, verdict.stream_id)
        room = self._rooms.get(key)
        if room is None or verdict.episode != room.episode or room.state == "GREEN" or verdict.decision_id in room.verdicts:
            return None
        room.verdicts.append(verdict.decision_id)
        policy = self.policies.policy_for(verdict.tenant_id)
        reason = f"{verdict.verifier}: {verdict.reason}"
        if verdict.outcome == "RED":
            previous, room.latched = room.state, True
            if previous == "RED":
                return None
            drivers = self._drivers(room, policy, policy.risk.yellow_exit)
            return self._change(key, room, policy, "RED", drivers, f"confirmed by {reason}")
        if verdict.outcome == "GREEN":
            until = room.last_pts + policy.risk.verdict_hold_s
            for slot in room.slots.values():
                for detector, hit in slot.hits.items():
                    for label in hit.labels:
                        room.suppressed[(detector, label)] = until
            room.slots.clear()
            return self._change(key, room, policy, "GREEN", (), f"cleared by {reason}")
        return None

    def forget(self, tenant_id: str, stream_id: str) -> None:
        """Drop a room (stream ended); a later frame starts it afresh, GREEN."""
        self._rooms.pop((tenant_id, stream_id), None)

    def snapshot(self) -> dict:
        """Plain, picklable state of every room."""
        return {
            "version": _SNAPSHOT_VERSION,
            "rooms": [
                {
                    "tenant_id": tenant,
                    "stream_id": stream,
                    **{name: getattr(room, name) for name in _ROOM_SCALARS},
                    "verdicts": list(room.verdicts),
                    "slots": [[index, {d: asdict(h) for d, h in slot.hits.items()}, list(slot.unknown)]
                              for index, slot in room.slots.items()],
                    "suppressed": [[d, label, until] for (d, label), until in room.suppressed.items()],
                    "unknown_frames": dict(room.unknown_frames),
                }
                for (tenant, stream), room in self._rooms.items()
            ],
        }

    def restore(self, state: dict) -> None:
        """Replace all rooms with a snapshot's."""
        if state.get("version") != _SNAPSHOT_VERSION:
            raise ValueError(f"risk snapshot version {state.get('version')!r}, expected {_SNAPSHOT_VERSION}")
        self._rooms = {}
        for r in state["rooms"]:
            room = _Room(**{name: r[name] for name in _ROOM_SCALARS}, verdicts=list(r["verdicts"]),
                         unknown_frames=dict(r["unknown_frames"]))
            room.slots = {int(index): _Slot({d: _Hit(**{**h, "labels": tuple(h["labels"])}) for d, h in hits.items()},
                                            list(unknown))
                          for index, hits, unknown in r["slots"]}
            room.suppressed = {(d, label): until for d, label, until in r["suppressed"]}
            self._rooms[(r["tenant_id"], r["stream_id"])] = room

    def _add_frame(self, room: _Room, policy: ModerationPolicy, segment: SegmentInfo, pts_s: float,
                   scores: list[DetectorScore]) -> bool:
        """Put one frame's scores into its slot and drop slots that left the window; True on a RED hit."""
        risk = policy.risk
        index = math.floor(pts_s / risk.slot_s)
        slot = room.slots.setdefault(index, _Slot())
        wallclock = segment.wallclock_start + (pts_s - segment.media_start_s)
        room.suppressed = {k: until for k, until in room.suppressed.items() if until >= pts_s}
        red_hit = False
        for s in scores:
            if s.score is None:
                room.unknown_frames[s.detector] = room.unknown_frames.get(s.detector, 0) + 1
                if s.detector not in slot.unknown:
                    slot.unknown.append(s.detector)
                continue
            labels = tuple(label for label in s.labels if (s.detector, label) not in room.suppressed)
            score = s.score if labels or not s.labels else 0.0
            red_hit |= s.severity == "RED" and score > 0
            hit = slot.hits.get(s.detector)
            if hit is None or score > hit.score:
                best = _Hit(score, pts_s, segment.frame_key(pts_s), segment.seq, wallclock, labels, s.text, s.severity)
                if hit is not None:
                    best.frames, best.first_pts, best.last_pts, best.first_wallclock = (
                        hit.frames, hit.first_pts, hit.last_pts, hit.first_wallclock)
                slot.hits[s.detector] = hit = best
            if score >= risk.yellow_exit:
                hit.frames += 1
                hit.last_pts = pts_s
                if hit.first_pts is None:
                    hit.first_pts, hit.first_wallclock = pts_s, wallclock
        oldest = index - math.ceil(risk.window_s / risk.slot_s) + 1
        for stale in [i for i in room.slots if i < oldest]:
            del room.slots[stale]
        return red_hit

    def _step(self, key: RoomKey, room: _Room, policy: ModerationPolicy, red_hit: bool) -> RiskDecision | None:
        """The state machine, after one frame."""
        risk = policy.risk
        score = self._score(room, policy)
        settled = room.last_pts - room.since_pts >= risk.min_dwell_s
        if red_hit:
            room_was_red = room.state == "RED"
            room.latched = True
            if room_was_red:
                return None
            return self._change(key, room, policy, "RED", self._red_drivers(room, policy), "RED-severity hit",
                                red_only=True)
        if room.state != "RED" and score >= risk.red_enter:
            return self._change(key, room, policy, "RED", self._drivers(room, policy, risk.red_enter),
                                f"score {score:.2f} >= red_enter {risk.red_enter}")
        if room.state == "GREEN" and score >= risk.yellow_enter:
            return self._change(key, room, policy, "YELLOW", self._drivers(room, policy, risk.yellow_enter),
                                f"score {score:.2f} >= yellow_enter {risk.yellow_enter}")
        if room.state != "GREEN" and settled and score < risk.yellow_exit:
            return self._change(key, room, policy, "GREEN", (), f"score {score:.2f} < yellow_exit {risk.yellow_exit}")
        if room.state == "RED" and not room.latched and settled and score < risk.red_exit:
            return self._change(key, room, policy, "YELLOW", self._drivers(room, policy, risk.yellow_exit),
                                f"score {score:.2f} < red_exit {risk.red_exit}")
        if room.state == "YELLOW" and room.last_pts - room.last_verify_pts >= risk.reverify_s:
            return self._decide(key, room, policy, "reverify", room.state, self._drivers(room, policy, risk.yellow_exit),
                                "still YELLOW: verify again with the evidence since")
        return None

    def _change(self, key: RoomKey, room: _Room, policy: ModerationPolicy, state: RiskState,
                drivers: tuple[Driver, ...], reason: str, red_only: bool = False) -> RiskDecision:
        previous = room.state
        if previous == "GREEN":
            room.episode += 1
            room.decisions = 0
            room.verdicts = []
        event: Event = ("alert" if previous == "GREEN" else "resolve" if state == "GREEN"
                        else "escalate" if state == "RED" else "deescalate")
        room.state, room.since_pts = state, room.last_pts
        if state != "RED":
            room.latched = False
        return self._decide(key, room, policy, event, previous, drivers, reason, red_only)

    def _decide(self, key: RoomKey, room: _Room, policy: ModerationPolicy, event: Event, previous: RiskState,
                drivers: tuple[Driver, ...], reason: str, red_only: bool = False) -> RiskDecision:
        verify = room.state == "YELLOW"
        if verify:
            room.last_verify_pts = room.last_pts
        hits = self._evidence_hits(room, policy, drivers, red_only)
        first = min(hits, key=lambda h: h.first_pts, default=None)
        decision = RiskDecision(
            decision_id=f"{key[0]}/{key[1]}/{room.episode}/{room.decisions}",
            tenant_id=key[0], stream_id=key[1], episode=room.episode, event=event, previous=previous,
            state=room.state, score=round(self._score(room, policy), 6), reason=reason, drivers=drivers,
            evidence=tuple(_evidence(key[1], h) for h in sorted(hits, key=lambda h: h.pts_s)),
            verify=verify, actions=policy.actions.get(room.state, ()) if event != "reverify" else ("verify",),
            policy_version=policy.version, pts_s=room.last_pts,
            first_evidence_pts=None if first is None else first.first_pts,
            stream_latency_s=None if first is None else room.last_pts - first.first_pts,
            latency_s=None if first is None else self.clock() - first.first_wallclock,
            degraded=tuple(sorted({d for slot in room.slots.values() for d in slot.unknown})),
        )
        room.decisions += 1
        return decision

    def _pooled(self, room: _Room, policy: ModerationPolicy) -> dict[str, float]:
        per_detector: dict[str, list[float]] = defaultdict(list)
        for slot in room.slots.values():
            for detector, hit in slot.hits.items():
                per_detector[detector].append(hit.score)
        k = policy.risk.top_k
        return {d: sum(sorted(v, reverse=True)[:k]) / k for d, v in per_detector.items()}

    def _score(self, room: _Room, policy: ModerationPolicy) -> float:
        return max(self._pooled(room, policy).values(), default=0.0)

    def _drivers(self, room: _Room, policy: ModerationPolicy, threshold: float) -> tuple[Driver, ...]:
        """Detectors whose pooled score reaches ``threshold``, best first; the best one if none does."""
        pooled = sorted(self._pooled(room, policy).items(), key=lambda item: -item[1])
        chosen = [(d, s) for d, s in pooled if s >= threshold] or pooled[:1]
        return tuple(self._driver(room, policy, d, s) for d, s in chosen)

    def _red_drivers(self, room: _Room, policy: ModerationPolicy) -> tuple[Driver, ...]:
        pooled = self._pooled(room, policy)
        detectors = sorted({d for slot in room.slots.values() for d, h in slot.hits.items() if h.severity == "RED"})
        return tuple(self._driver(room, policy, d, pooled[d], red_only=True) for d in detectors)

    def _driver(self, room: _Room, policy: ModerationPolicy, detector: str, score: float,
                red_only: bool = False) -> Driver:
        hits = [slot.hits[detector] for slot in room.slots.values() if detector in slot.hits]
        hits = [h for h in hits if h.frames and (h.severity == "RED" or not red_only)]
        labels = tuple(dict.fromkeys(label for h in sorted(hits, key=lambda h: -h.score) for label in h.labels))
        return Driver(detector=detector, score=round(score, 6), labels=labels, hit_frames=sum(h.frames for h in hits))

    def _evidence_hits(self, room: _Room, policy: ModerationPolicy, drivers: tuple[Driver, ...],
                       red_only: bool) -> list[_Hit]:
        """The drivers' best evidence slots in the window (only RED-severity ones for a RED hit), at most
        ``max_evidence``."""
        wanted = {d.detector for d in drivers}
        hits = [h for slot in room.slots.values() for d, h in slot.hits.items()
                if d in wanted and h.frames and (h.severity == "RED" or not red_only)]
        return sorted(hits, key=lambda h: (-h.score, h.pts_s))[: policy.risk.max_evidence]


def _evidence(stream_id: str, hit: _Hit) -> Evidence:
    start = hit.first_pts if hit.first_pts is not None else hit.pts_s
    end = hit.last_pts if hit.last_pts is not None else hit.pts_s
    start_wall = hit.wallclock - (hit.pts_s - start)
    return Evidence(
        stream_id=stream_id, frame_key=hit.frame_key, t_start=start, t_end=end,
        wallclock_start=datetime.fromtimestamp(start_wall, UTC),
        wallclock_end=datetime.fromtimestamp(start_wall + (end - start), UTC),
        score=hit.score, segment_seq=hit.segment_seq, thumbnail=hit.frame_key,
        text=hit.text,
    )
