"""The on-screen text tier: text stored with its segment, a text index per tenant, episode search, rebuild."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import redis

from deploy.processes import ProcessRecord
from memory_store import keys
from memory_store.config import MemoryConfig
from memory_store.hits import TextHit
from memory_store.rebuild import rebuild_index
from memory_store.redis_tier import RedisTier
from memory_store.service import MemoryStore
from memory_store.vector_index import VectorIndex
from operators.frames import CompressedBatch, FrameText, StageError, TextLine
from tests.memory_store.batches import WALL0, make_batch, unit
from tests.memory_store.conftest import StoreFactory
from tests.memory_store.crash import kill_and_restart

DIM = 384  # all-MiniLM-L6-v2
BOX = ((0.1, 0.8), (0.9, 0.8), (0.9, 0.9), (0.1, 0.9))


def embedding_of(text: str) -> np.ndarray:
    """A stand-in for TextEmbedder: one fixed unit vector per text, so equal texts embed equally."""
    return unit(np.random.default_rng(zlib.crc32(text.encode())).standard_normal(DIM))


def frame_text(pts: float, text: str | None, embedding: np.ndarray | None = None) -> FrameText:
    """What the OCR stage gives for a frame showing ``text`` (lines split on newlines); None: no text."""
    if text is None:
        return FrameText(pts, [], None, reused=False)
    lines = [TextLine(line, 0.93, BOX) for line in text.split("\n")]
    return FrameText(pts, lines, embedding_of(text) if embedding is None else embedding, reused=False)


def texts_for(batch: CompressedBatch, texts: Sequence[str | None]) -> list[FrameText]:
    return [frame_text(float(p), t) for p, t in zip(batch.pts_s, texts)]


def write_episodes(store: MemoryStore, stream: str, texts: Sequence[str | None], *, tenant: str = "acme") -> None:
    """A stream sampled at 1 fps in segments of two frames; frame i (at i seconds) shows texts[i]."""
    for seq in range(len(texts) // 2):
        batch = make_batch(tenant=tenant, stream=stream, seq=seq)
        store.write(batch, texts_for(batch, texts[2 * seq : 2 * seq + 2]))


def news_workload(store: MemoryStore) -> None:
    """Two tenants; headlines that stay on for several seconds, frames without text between them."""
    write_episodes(store, "cam-1", ["STORM WARNING\nCOAST"] * 5 + [None] * 3 + ["ELECTION RESULTS"] * 4
                   + ["STORM WARNING\nCOAST"] * 2 + [None, "SCORES"])
    write_episodes(store, "cam-2", ["STORM WARNING\nCOAST"] * 2 + ["WEATHER"] * 6 + [None] * 4)
    write_episodes(store, "cam-1", ["ELECTION RESULTS"] * 6, tenant="other")


QUERIES = ["STORM WARNING\nCOAST", "ELECTION RESULTS", "WEATHER", "SCORES", "nothing like it"]
TEXT_SCOPES = [dict(), dict(stream_ids=["cam-2"]), dict(t_from=WALL0 + 3, t_to=WALL0 + 12)]


def text_answers(store: MemoryStore) -> list[list[TextHit]]:
    return [store.search_text(tenant, embedding_of(q), k=3, **scope) for tenant in ("acme", "other")
            for q in QUERIES for scope in TEXT_SCOPES]


def text_ids_in_redis(client: redis.Redis, tenant: str) -> list[int]:
    return [int(score) for _, score in client.zrange(keys.text_ids(tenant), 0, -1, withscores=True)]


def dump_all(client: redis.Redis) -> dict[bytes, bytes]:
    return {key: client.dump(key) for key in client.scan_iter(count=1000)}


# -- writing ---------------------------------------------------------------------------------------


def test_text_is_stored_with_its_segment_and_a_replay_changes_nothing(open_store: StoreFactory,
                                                                      client: redis.Redis) -> None:
    store = open_store()
    batch = make_batch(frames=3)
    texts = [frame_text(0.0, "STORM WARNING\nCOAST"), frame_text(1.0, None),
             FrameText(2.0, [TextLine("LIVE", 0.71, BOX)], None, reused=True)]  # lines without an embedding
    result = store.write(batch, texts)

    storm, empty, live = store.frames("acme", result.frame_keys)
    assert storm.text == "STORM WARNING\nCOAST"
    assert storm.lines == [{"text": "STORM WARNING", "confidence": 0.93, "box": [list(c) for c in BOX]},
                           {"text": "COAST", "confidence": 0.93, "box": [list(c) for c in BOX]}]
    assert (empty.text, empty.lines) == ("", [])
    assert (live.text, [line["confidence"] for line in live.lines]) == ("LIVE", [0.71])
    fields = [set(client.hkeys(keys.frame("acme", key))) for key in result.frame_keys]
    assert [{b"text_lines", b"text_embedding"} & f for f in fields] == [{b"text_lines", b"text_embedding"}, set(),
                                                                        {b"text_lines"}]
    stored = np.frombuffer(client.hget(keys.frame("acme", result.frame_keys[0]), "text_embedding"), np.float32)
    np.testing.assert_array_equal(stored, texts[0].embedding)
    # Only frames with a text embedding are in the text index.
    assert text_ids_in_redis(client, "acme") == [result.ids[0]]
    assert [h.frame_key for h in store.search_text("acme", embedding_of("LIVE"), k=10)] == [result.frame_keys[0]]
    assert store.recent("acme", n=3)[0].text == "STORM WARNING\nCOAST"

    before, stats = dump_all(client), store.stats()
    assert store.write(batch, [frame_text(float(p), "OTHER TEXT") for p in batch.pts_s]) is None
    assert dump_all(client) == before and store.stats() == stats
    assert {k: stats[k] for k in ("text_frames", "text_indexed", "text_index_sizes")} == dict(
        text_frames=1, text_indexed=1, text_index_sizes={"acme": 1})


def test_a_frame_not_read_is_stored_as_unknown_text_not_as_no_text(open_store: StoreFactory,
                                                                   client: redis.Redis) -> None:
    """The live reader was behind (ocr.max_lag_s): readers must tell "not read" from "read, no text"."""
    store = open_store()
    batch = make_batch(frames=3)
    texts = [frame_text(0.0, "STORM WARNING"), FrameText(1.0, [], None, reused=False, unread=True),
             frame_text(2.0, None)]
    result = store.write(batch, texts)
    read, unread, empty = store.frames("acme", result.frame_keys)
    assert [(f.text, f.text_read) for f in (read, unread, empty)] == [("STORM WARNING", True), ("", False),
                                                                      ("", True)]
    assert client.hget(keys.frame("acme", result.frame_keys[1]), "text_unread") == b"1"
    assert text_ids_in_redis(client, "acme") == [result.ids[0]]
    # A replay (livelens replay: every frame read) replaces the segment, and with it the mark.
    replayed = store.write(batch, texts_for(batch, ["STORM WARNING", "COAST", None]), replace=True)
    assert [(f.text, f.text_read) for f in store.frames("acme", replayed.frame_keys)] == [
        ("STORM WARNING", True), ("COAST", True), ("", True)]


def test_acknowledged_text_survives_redis_sigkill(redis_server: ProcessRecord, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_server.address)
    store = MemoryStore(client, MemoryConfig())
    batch = make_batch(seq=4)
    result = store.write(batch, texts_for(batch, ["BREAKING", "BREAKING"]))
    restarted = kill_and_restart(redis_server, tmp_path)  # right after the write returned
    client.close()
    try:
        client = redis.Redis.from_url(restarted.address)
        assert [f.text for f in RedisTier(client, MemoryConfig()).frames("acme", result.frame_keys)] == ["BREAKING"] * 2
        assert text_ids_in_redis(client, "acme") == list(result.ids)
        client.close()
    finally:
        restarted.stop()


def test_replay_indexes_text_that_was_durable_but_not_searchable(open_store: StoreFactory,
                                                                  client: redis.Redis) -> None:
    """An earlier attempt made the segment durable and died before the FAISS adds."""
    store = open_store()
    batch = make_batch(seq=2)
    RedisTier(client, MemoryConfig()).write_segment(batch, texts_for(batch, ["FLOOD ALERT", None]))
    assert store.search_text("acme", embedding_of("FLOOD ALERT")) == []

    assert store.write(batch, texts_for(batch, ["FLOOD ALERT", None])) is None
    assert [h.frame_key for h in store.search_text("acme", embedding_of("FLOOD ALERT"))] == ["acme/cam-1/2/4000"]
    assert store.stats()["text_index_sizes"] == {"acme": 1}


def _shifted(texts: list[FrameText], by: float) -> list[FrameText]:
    return [FrameText(t.pts_s + by, t.lines, t.embedding, t.reused) for t in texts]


@pytest.mark.parametrize(
    ("texts", "code"),
    [
        pytest.param(lambda b: texts_for(b, ["A B C"]), "text_mismatch", id="fewer-texts"),
        pytest.param(lambda b: texts_for(b, ["A B C"] * 2) + [frame_text(2.0, None)], "text_mismatch",
                     id="more-texts"),
        pytest.param(lambda b: _shifted(texts_for(b, ["A B C", None]), 0.5), "text_mismatch", id="other-pts"),
        pytest.param(lambda b: texts_for(b, ["A B C", None])[::-1], "text_mismatch", id="other-order"),
        pytest.param(lambda b: [frame_text(0.0, "A B C", np.full(DIM, np.nan)), frame_text(1.0, None)],
                     "bad_text_embedding", id="nan-embedding"),
        pytest.param(lambda b: [frame_text(0.0, "A B C", np.zeros(DIM)), frame_text(1.0, None)],
                     "bad_text_embedding", id="zero-embedding"),
        pytest.param(lambda b: [FrameText(0.0, [], embedding_of("A"), False), frame_text(1.0, None)],
                     "bad_text_embedding", id="embedding-without-lines"),
        pytest.param(lambda b: [frame_text(0.0, "A B C"), frame_text(1.0, "D E F", unit(np.ones(DIM // 2)))],
                     "text_embedding_dim_mismatch", id="two-sizes"),
        pytest.param(lambda b: [FrameText(0.0, [TextLine("A B C", float("nan"), BOX)], embedding_of("A B C"), False),
                                frame_text(1.0, None)], "bad_text", id="nan-confidence"),
        pytest.param(lambda b: [FrameText(0.0, [TextLine("A B C", 0.9, BOX)], None, False, unread=True),
                                frame_text(1.0, None)], "bad_text", id="unread-with-lines"),
    ],
)
def test_bad_texts_are_refused_before_any_write(open_store: StoreFactory, client: redis.Redis,
                                                texts: Callable[[CompressedBatch], list[FrameText]], code: str) -> None:
    store = open_store()
    batch = make_batch()
    with pytest.raises(StageError) as raised:
        store.write(batch, texts(batch))
    assert (raised.value.code, raised.value.stage) == (code, "memory")
    assert client.dbsize() == 0


def test_text_dimension_change_is_refused_before_redis(open_store: StoreFactory) -> None:
    store = open_store()
    first = make_batch(seq=0)
    store.write(first, texts_for(first, ["A B C", None]))
    second = make_batch(seq=1)
    with pytest.raises(StageError) as raised:
        store.write(second, [frame_text(2.0, "D E F", unit(np.ones(DIM // 2))), frame_text(3.0, None)])
    assert raised.value.code == "text_embedding_dim_mismatch"
    assert store.stats()["frames"] == 2


# -- searching -------------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", [dict(stream_ids=["cam-2"]), dict(t_from=WALL0 + 3, t_to=WALL0 + 7),
                                   dict(stream_ids=["cam-1"], t_from=WALL0 + 5)])
def test_search_text_filters_are_exact(open_store: StoreFactory, scope: dict) -> None:
    """Every frame has its own text; out of scope, texts embedded closest to the query."""
    store = open_store()
    query = embedding_of("the query")
    rng = np.random.default_rng(5)
    in_scope: dict[str, np.ndarray] = {}
    for seq in range(5):
        for stream in ("cam-1", "cam-2"):
            batch = make_batch(stream=stream, seq=seq)
            starts = batch.segment.wallclock_start + (batch.pts_s - batch.segment.media_start_s)
            inside = [(scope.get("stream_ids") is None or stream in scope["stream_ids"])
                      and scope.get("t_from", -np.inf) <= start <= scope.get("t_to", np.inf) for start in starts]
            vectors = [unit(rng.standard_normal(DIM)) if ok else unit(query + 0.01 * rng.standard_normal(DIM))
                       for ok in inside]
            texts = [frame_text(float(p), f"TEXT {stream} {p}", v) for p, v in zip(batch.pts_s, vectors)]
            result = store.write(batch, texts)
            in_scope.update({key: v for key, v, ok in zip(result.frame_keys, vectors, inside) if ok})

    hits = store.search_text("acme", query, k=3, **scope)

    best = sorted(in_scope, key=lambda key: -float(in_scope[key] @ query))[:3]
    assert [h.frame_key for h in hits] == best
    np.testing.assert_allclose([h.score for h in hits], [in_scope[key] @ query for key in best], atol=1e-5)
    assert all(h.text.startswith("TEXT ") for h in hits)


def test_search_text_returns_whole_episodes_best_first(open_store: StoreFactory) -> None:
    store = open_store()
    news_workload(store)

    storm = store.search_text("acme", embedding_of("STORM WARNING\nCOAST"), k=3)
    # All three score 1: equal scores go oldest first.
    assert [(h.stream_id, h.t_start, h.t_end) for h in storm] == [("cam-1", 0.0, 5.0), ("cam-2", 0.0, 2.0),
                                                                   ("cam-1", 12.0, 14.0)]
    first = storm[0]
    assert (first.frame_key, first.seq, first.text) == ("acme/cam-1/0/0", 0, "STORM WARNING\nCOAST")
    assert (first.wallclock_start, first.wallclock_end) == (WALL0, WALL0 + 5)
    assert first.score == pytest.approx(1.0, abs=1e-5)
    assert [line["text"] for line in first.lines] == ["STORM WARNING", "COAST"]
    assert store.thumbnail(first.thumbnail).endswith(b"acme/cam-1/0/0")
    # A time scope cuts an episode at the scope's edge.
    cut = store.search_text("acme", embedding_of("STORM WARNING\nCOAST"), k=1, t_from=WALL0 + 3)
    assert [(h.t_start, h.t_end) for h in cut] == [(3.0, 5.0)]


def test_search_text_reads_deeper_until_the_episodes_are_whole(open_store: StoreFactory) -> None:
    """A headline on for 30 frames: the first read (4 frames per hit asked for) holds part of it only."""
    store = open_store()
    write_episodes(store, "cam-1", [f"ITEM {i}" for i in range(5)] + ["STORM WARNING"] * 30
                   + [f"ITEM {i}" for i in range(5, 10)])

    (whole,) = store.search_text("acme", embedding_of("STORM WARNING"), k=1)
    assert (whole.t_start, whole.t_end) == (5.0, 35.0)
    first, second = store.search_text("acme", embedding_of("STORM WARNING"), k=2)
    assert (first.text, first.t_start, first.t_end) == ("STORM WARNING", 5.0, 35.0)
    assert second.text.startswith("ITEM ")


# -- restart ---------------------------------------------------------------------------------------


def test_new_store_on_the_same_redis_serves_the_same_text(open_store: StoreFactory, client: redis.Redis,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    old = open_store(snapshots=False)
    news_workload(old)

    with caplog.at_level(logging.INFO, logger="memory_store"):
        new = open_store(snapshots=False)
    assert "tenant acme text: 0 entries from snapshot (0 of its removed since), 20 from Redis" in caplog.text
    assert new.stats() == old.stats()
    assert {k: new.stats()[k] for k in ("text_frames", "text_indexed", "text_index_sizes")} == dict(
        text_frames=26, text_indexed=26, text_index_sizes={"acme": 20, "other": 6})
    assert text_answers(new) == text_answers(old)
    rebuilt = rebuild_index(RedisTier(client, MemoryConfig()), "acme", "text", None).index
    assert list(rebuilt.ids()) == text_ids_in_redis(client, "acme")


def test_new_store_loads_the_text_snapshot_and_catches_up(open_store: StoreFactory, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    old = open_store(snapshot_every_frames=10)
    news_workload(old)  # acme: 20 frames with text, a text snapshot after 11 (segments add two at a time)
    assert (tmp_path / "faiss" / "tenant-acme" / "text" / "manifest.json").exists()
    write_episodes(old, "cam-3", ["LATE NEWS"] * 4)  # a snapshot after its first segment, not its second

    with caplog.at_level(logging.INFO, logger="memory_store"):
        new = open_store(snapshot_every_frames=10)
    # Frame ids: cam-1 1-16, cam-2 17-28, cam-3 29-32; the snapshot holds the text ids up to 30.
    assert "tenant acme text: 22 entries from snapshot (0 of its removed since), 2 from Redis" in caplog.text
    assert "tenant other text: 0 entries from snapshot (0 of its removed since), 6 from Redis" in caplog.text
    assert new.stats() == old.stats()
    assert text_answers(new) == text_answers(old)
    assert [h.t_end for h in new.search_text("acme", embedding_of("LATE NEWS"), k=1)] == [4.0]


def test_text_snapshot_with_a_gap_is_caught_up_exactly(open_store: StoreFactory, client: redis.Redis,
                                                       tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A snapshot missing an id Redis holds (an add that failed) gets exactly that one from Redis."""
    complete = open_store(snapshots=False)
    news_workload(complete)
    tier = RedisTier(client, MemoryConfig())
    entries = [e for e in tier.frames_since("acme", 0, "text") if e.id != 11]
    partial = VectorIndex(DIM)
    partial.add([e.id for e in entries], np.stack([e.embedding for e in entries]), [e.stream_id for e in entries],
                [e.wallclock for e in entries])
    partial.snapshot(tmp_path / "faiss" / "tenant-acme" / "text", epoch=tier.epoch("acme"))

    with caplog.at_level(logging.INFO, logger="memory_store"):
        new = open_store()
    # The snapshot lacks text id 11 only: that one is read from Redis.
    assert "tenant acme text: 19 entries from snapshot (0 of its removed since), 1 from Redis" in caplog.text
    assert new.stats() == complete.stats()
    assert text_answers(new) == text_answers(complete)


def test_text_snapshot_of_a_lost_redis_is_discarded(open_store: StoreFactory, client: redis.Redis,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Redis lost its data while the snapshot survived: the same ids now carry other text."""
    old = open_store(snapshot_every_frames=2)
    write_episodes(old, "old", ["OLD NEWS"] * 6)
    client.flushall()
    write_episodes(MemoryStore(client, MemoryConfig()), "new", ["NEW NEWS"] * 8)

    with caplog.at_level(logging.WARNING):
        new = open_store(snapshot_every_frames=2)
    assert "text FAISS snapshot of tenant acme does not match Redis" in caplog.text
    assert new.stats()["text_index_sizes"] == {"acme": 8}
    assert {h.text for h in new.search_text("acme", embedding_of("OLD NEWS"), k=10)} == {"NEW NEWS"}
