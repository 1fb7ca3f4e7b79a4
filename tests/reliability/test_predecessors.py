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


@ray.remote(max_retries=0)
def arrives(value, delay_s: float):
    """A decode that ends ``delay_s`` late."""
    time.sleep(delay_s)
    return value


def test_the_encoder_takes_a_stream_s_segments_in_order_whatever_order_their_frames_arrive_in(
        ray_runtime, tmp_path, tiny_models):
    """The encoder is an asyncio actor: Ray runs its calls as their frames arrive. A segment whose decode ended
    first must still reach the stream's compression and boundary state after its predecessors."""
    from pipelines.ingest.chain import OperatorChain
    from pipelines.ray.dag import EncodeActor
    from tests.test_chain import assert_same, config, segments

    settings = config(tmp_path, tiny_models, "on")
    settings = settings.model_copy(update={"pipeline": settings.pipeline.model_copy(
        update={"evicted_state_ttl_s": 0})})  # no Redis here: a quiet stream's state is not kept for its return
    stream = [batch for batch in segments(range(4)) if batch.segment.stream_id == "a"]
    want = OperatorChain.build(settings).visual.process(stream)  # in order, in process
    assert any(w.boundaries.any() for w in want)  # the cut at segment 2: state the order matters to
    encoder = EncodeActor.options(num_cpus=0).remote(settings)
    encoded: list = []
    for seq, batch in enumerate(stream):
        frames = arrives.remote(batch, 3.0 if seq == 1 else 0.0)  # segment 1's decode ends after 2's and 3's
        encoded.append(encoder.encode_compress.remote(frames, after=list(encoded) or None))
    assert_same(ray.get(encoded, timeout=120), want)
    ray.kill(encoder)


def test_a_memory_write_that_arrives_before_its_predecessor_s_waits_for_it_and_both_are_stored(
        ray_runtime, tmp_path, tiny_models, redis_server):
    """Ray starts the memory actor's calls as their arguments arrive: a segment whose compression ended first
    reaches the shard before its predecessor. It must wait for it, not hold the shard's writes until its wait
    runs out (then every later segment of the stream in flight failed, and went round again)."""
    from pipelines.ingest.chain import OperatorChain
    from pipelines.ray.memory import MemoryActor
    from tests.test_chain import config, segments

    settings = config(tmp_path, tiny_models, "on")
    settings = settings.model_copy(update={"redis": settings.redis.model_copy(update={"url": redis_server.address})})
    stream = [batch for batch in segments(range(4)) if batch.segment.stream_id == "a"]
    compressed = OperatorChain.build(settings).visual.process(stream)
    memory = MemoryActor.options(num_cpus=0).remote(settings, 0)
    written: list = []
    for seq, batch in enumerate(compressed):
        ready = arrives.remote(batch, 3.0 if seq == 1 else 0.0)  # segment 1's compression ends after 2's and 3's
        written.append(memory.write.remote(ready, after=list(written) or None))
    results = ray.get(written, timeout=60)  # a PredecessorFailed would raise here
    assert all(r is not None and len(r.ids) > 0 for r in results), results  # None: taken for a replay
    (info,) = ray.get(memory.call.remote("streams", "t1"))
    assert info.segments == len(compressed), info
    ray.kill(memory)
