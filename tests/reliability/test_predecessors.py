"""The order check of the ordered steps (memory write, standing queries, moderation) on a real Ray runtime:
`require_predecessor` lets a step go on only when the earlier segments of its stream passed that step, or were
refused as bad input."""

from __future__ import annotations

import time

import pytest
import ray

from operators.frames import StageError
from pipelines.failures import PredecessorFailed
from pipelines.ray import supervision
from pipelines.ray.supervision import require_predecessor


@ray.remote(max_retries=0)
def step(outcome: str, delay_s: float = 0.0) -> str:
    time.sleep(delay_s)
    if outcome == "bad input":
        raise StageError("truncated_segment", "a third of a segment", stage="decode")
    if outcome == "crash":
        raise RuntimeError("the actor's process died under it")
    return outcome


@pytest.mark.parametrize(("predecessors", "refused"), [
    ([], False),
    (["ok", "ok"], False),
    (["ok", "bad input"], False),  # refused as bad input: dead-lettered, no obstacle to the next segment
    (["crash"], True),  # failed: it is retried first, then this one
    (["ok", "crash"], True),
])
def test_a_step_goes_on_only_after_its_stream_s_earlier_segments(ray_runtime, predecessors, refused):
    after = [step.remote(outcome) for outcome in predecessors] or None
    if refused:
        with pytest.raises(PredecessorFailed, match="failed"):
            require_predecessor(after, "moderation")
    else:
        require_predecessor(after, "moderation")


def test_a_predecessor_still_running_past_the_wait_is_refused_not_waited_for(ray_runtime, monkeypatch):
    monkeypatch.setattr(supervision, "PREDECESSOR_WAIT_S", 0.5)
    started = time.monotonic()
    with pytest.raises(PredecessorFailed, match="not through yet"):
        require_predecessor([step.remote("ok", delay_s=30)], "memory write")
    assert time.monotonic() - started < 5
