"""The query engine in one process, without Ray: the memory store, the encoder and the answerer themselves
stand behind its typed interfaces (memory_store.client, pipelines.query.clients)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
import redis

from contracts import messages
from memory_store import keys
from memory_store.config import MemoryConfig
from memory_store.service import MemoryStore
from operators.answer import Answerer
from operators.config import AnswerConfig, EncodeConfig, OcrConfig
from operators.encode import VisionEncoder
from pipelines.config import LivelensConfig
from pipelines.query.engine import QueryEngine, QueryError
from tests.memory_store.batches import WALL0, make_batch

CAPTIONS = ["a red bus", "a green field", "a crowded stadium"]


@pytest.fixture
def engine(redis_server, tiny_models) -> QueryEngine:
    config = LivelensConfig(ocr=OcrConfig(enabled=False), encode=EncodeConfig(model=str(tiny_models["clip"])))
    encoder = VisionEncoder(config.encode, tiny_models["clip"])
    store = MemoryStore(redis.Redis.from_url(redis_server.address), MemoryConfig())
    # Each frame's index embedding is a caption's text embedding, so a text query has one exact match.
    vectors = encoder.embed_text(CAPTIONS)
    store.write(make_batch(tenant="acme", stream="cam-1", frames=len(CAPTIONS), embedding=vectors,
                           embed_dim=vectors.shape[1], tokens=encoder.tokens_per_frame,
                           token_dim=encoder.token_dim))
    return QueryEngine(config, store, encoder, Answerer(AnswerConfig(), None))


@pytest.mark.parametrize("caption", CAPTIONS)
def test_text_query_answers_from_the_store_in_process(engine, caption):
    answer = engine.run(messages.Query(tenant_id="acme", text=caption, top_k=1, adaptive_k=False))

    assert answer.error is None and answer.extractive
    assert len(answer.evidence) == 1
    best = answer.evidence[0]
    assert best.stream_id == "cam-1"
    assert best.t_start == pytest.approx(float(CAPTIONS.index(caption)))
    assert best.score == pytest.approx(1.0, abs=1e-4)


def test_streams_and_thumbnails_go_through_the_memory_client(engine):
    [stream] = engine.streams("acme")
    assert stream.stream_id == "cam-1"
    frame = engine.timeline("acme", "cam-1", None, None, 10)[0]
    own = keys.thumbnail("acme", frame.frame_key)

    assert engine.thumbnail("acme", own) == b"\xff\xd8\xff" + frame.frame_key.encode()
    # Another tenant's key, or anything that is not a thumbnail key, reads nothing.
    assert engine.thumbnail("other", own) is None
    assert engine.thumbnail("acme", keys.streams("acme")) is None


@pytest.mark.parametrize("read", ["timeline", "transcript"])
def test_a_stream_id_memory_could_not_hold_is_refused_before_memory_is_read(engine, read):
    with pytest.raises(QueryError) as raised:
        getattr(engine, read)("acme", "../cam 1", None, None, 10)
    assert (raised.value.code, raised.value.status) == ("invalid_request", 422)
    assert getattr(engine, read)("acme", "cam-1", None, None, 10) is not None


def test_unreadable_example_image_is_a_query_error(engine):
    with pytest.raises(QueryError) as raised:
        engine.run(messages.Query(tenant_id="acme", image_jpeg_b64="bm90IGFuIGltYWdl"))
    assert raised.value.code == "bad_image"


def test_empty_query_returns_the_newest_frames(engine):
    answer = engine.run(messages.Query(tenant_id="acme", top_k=2, generate=False))

    assert [e.t_start for e in answer.evidence] == [1.0, 2.0]
    assert all(np.isclose(e.score, 1.0) for e in answer.evidence)


def test_empty_query_scoped_in_time_returns_the_newest_frames_inside_its_scope(engine):
    # Frames at WALL0 + 0, 1, 2 s; the scope ends before the newest one, so "what was on then" is frames 0 and 1.
    scope = messages.TimeScope(start=datetime.fromtimestamp(WALL0, UTC), end=datetime.fromtimestamp(WALL0 + 1.5, UTC))
    answer = engine.run(messages.Query(tenant_id="acme", top_k=2, generate=False, scope=scope))

    assert [e.t_start for e in answer.evidence] == [0.0, 1.0]
