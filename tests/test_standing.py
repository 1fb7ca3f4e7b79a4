"""Standing-query episodes against a real redis-server: table-driven hysteresis, replays, restarts."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from pipelines.query.standing import (
    FrameView,
    StandingEvaluator,
    StandingQuery,
    StandingRegistry,
)

MATCH = np.array([1.0, 0.0, 0.0], dtype=np.float32)
OTHER = np.array([0.0, 1.0, 0.0], dtype=np.float32)


def frames(pattern: str, start: float = 0.0) -> list[FrameView]:
    """One frame per second; 'x' shows the matching text, '.' other text, '_' no text at all."""
    out = []
    for i, c in enumerate(pattern):
        t = start + i
        vec = {"x": MATCH, ".": OTHER, "_": None}[c]
        out.append(FrameView(frame_key=f"t/s/0/{int(t * 1000)}", pts_s=t, t_end_s=t + 1, wallclock=1e9 + t,
                             embedding=OTHER, text="STORM" if c == "x" else "", text_embedding=vec))
    return out


@pytest.fixture
def client(redis_server) -> redis.Redis:
    return redis.Redis.from_url(redis_server.address)


def evaluator(client, fired: list) -> StandingEvaluator:
    return StandingEvaluator(client, lambda firings: fired.extend(firings))


@pytest.mark.parametrize(
    "pattern, rearm_s, fire_at",
    [
        ("....", 3, []),
        ("xxxx", 3, [0]),                     # one episode however long it lasts
        ("..xx..xx", 3, [2]),                 # a gap shorter than rearm_s does not re-arm
        ("xx....xx", 3, [0, 6]),              # absent for >= rearm_s: a new episode
        ("x___x", 3, [0, 4]),                 # frames without text count as absence
        ("x.x.x.x", 0, [0, 2, 4, 6]),         # rearm_s 0: every return fires
    ],
)
def test_fires_once_per_episode(client, pattern, rearm_s, fire_at):
    StandingRegistry(client).register(StandingQuery(query_id="q", tenant_id="t", text="storm",
                                                    text_vector=MATCH.tolist(), rearm_s=rearm_s))
    fired: list = []
    evaluator(client, fired).evaluate("t", "s", frames(pattern))
    assert [f.frame.pts_s for f in fired] == fire_at


def test_episodes_span_segments_restarts_and_replays(client):
    StandingRegistry(client).register(StandingQuery(query_id="q", tenant_id="t", text="storm",
                                                    text_vector=MATCH.tolist(), rearm_s=3))
    fired: list = []
    evaluator(client, fired).evaluate("t", "s", frames("..xx", 0))
    # A new evaluator (a restarted actor) continues the same episode from Redis...
    evaluator(client, fired).evaluate("t", "s", frames("xx..", 4))
    # ...and a replayed segment changes nothing.
    evaluator(client, fired).evaluate("t", "s", frames("..xx", 0))
    evaluator(client, fired).evaluate("t", "s", frames("..xx", 8))
    assert [f.frame.pts_s for f in fired] == [2, 10]


def test_stream_scope_and_other_streams(client):
    registry = StandingRegistry(client)
    registry.register(StandingQuery(query_id="only-a", tenant_id="t", stream_ids=["a"], text="storm",
                                    text_vector=MATCH.tolist()))
    fired: list = []
    evaluator(client, fired).evaluate("t", "b", frames("xx"))
    assert fired == []
    evaluator(client, fired).evaluate("t", "a", frames("xx"))
    assert [(f.query.query_id, f.stream_id) for f in fired] == [("only-a", "a")]


def test_image_queries_match_frame_embeddings(client):
    StandingRegistry(client).register(StandingQuery(query_id="img", tenant_id="t", image_vector=OTHER.tolist()))
    fired: list = []
    evaluator(client, fired).evaluate("t", "s", frames("___"))
    assert [f.frame.pts_s for f in fired] == [0]


def test_state_is_stored_only_after_delivery(client):
    StandingRegistry(client).register(StandingQuery(query_id="q", tenant_id="t", text="storm",
                                                    text_vector=MATCH.tolist()))

    def broken(_firings):
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        StandingEvaluator(client, broken).evaluate("t", "s", frames("x"))
    fired: list = []
    evaluator(client, fired).evaluate("t", "s", frames("x"))  # the replay delivers it
    assert len(fired) == 1


def test_registry_round_trip_and_delete(client):
    registry = StandingRegistry(client)
    q = registry.register(StandingQuery(tenant_id="t", text="storm", text_vector=MATCH.tolist(),
                                        webhook="http://127.0.0.1:9/hook"))
    assert registry.list("t") == [q] and registry.list("other") == []
    assert registry.delete("t", q.query_id) and not registry.delete("t", q.query_id)
    with pytest.raises(ValueError):
        StandingQuery(tenant_id="t", text="neither vector")


def test_evaluator_sees_queries_registered_and_deleted_after_it_started(client):
    fired: list = []
    ev = evaluator(client, fired)
    ev.evaluate("t", "s", frames("x"))
    registry = StandingRegistry(client)
    registry.register(StandingQuery(query_id="late", tenant_id="t", text="storm", text_vector=MATCH.tolist()))
    ev.evaluate("t", "s", frames("x", 1))
    registry.delete("t", "late")
    ev.evaluate("t", "s", frames("..xx", 2))
    assert [f.frame.pts_s for f in fired] == [1]


def test_spoken_words_fire_a_text_query_with_the_line_as_evidence(client):
    """A transcript line counts at the frame on screen when it starts; the alert's evidence is the line."""
    from operators.transcript import TranscriptLine
    from pipelines.query.standing import firing_alert

    StandingRegistry(client).register(StandingQuery(query_id="q", tenant_id="t", text="storm",
                                                    text_vector=MATCH.tolist(), rearm_s=3))
    said = TranscriptLine(2.4, 3.6, "the storm reaches the coast", "caption", channel="CC1")
    views = frames("____")  # no on-screen text at all
    views[2] = FrameView(**{**views[2].__dict__, "spoken": ((said, MATCH),)})
    fired: list = []
    evaluator(client, fired).evaluate("t", "s", views)

    [firing] = fired
    assert firing.frame.pts_s == 2.0 and firing.line == said
    [evidence] = firing_alert(firing, "t").evidence
    assert (evidence.source, evidence.text, evidence.t_start, evidence.t_end) == ("caption", said.text, 2.4, 3.6)
    assert evidence.wallclock_start.timestamp() == pytest.approx(1e9 + 2.4)
