"""VectorIndex: exact filtered search, idempotent adds, crash-safe snapshots."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from memory_store.vector_index import MANIFEST, VectorIndex
from tests.memory_store.batches import unit

DIM = 32
STREAMS = ["a", "b", "c"]


def filled(n: int = 300, seed: int = 0, ivf_min_vectors: int | None = None
           ) -> tuple[VectorIndex, np.ndarray, list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = unit(rng.standard_normal((n, DIM)))
    streams = [STREAMS[i % 3] for i in range(n)]
    wallclocks = np.arange(n, dtype=np.float64)
    index = VectorIndex(DIM, ivf_min_vectors=ivf_min_vectors)
    index.add(np.arange(1, n + 1), vectors, streams, wallclocks)
    return index, vectors, streams, wallclocks


def test_nearest_vector_is_itself() -> None:
    index, vectors, _, _ = filled()
    (best, score), *_ = index.search(vectors[41], 3)
    assert best == 42 and score == pytest.approx(1.0, abs=1e-5)


def test_add_skips_ids_already_present() -> None:
    index, vectors, streams, wallclocks = filled(30)
    assert index.add(np.arange(1, 31), vectors, streams, wallclocks) == 0
    assert index.add([31, 31, 5], vectors[:3], ["a"] * 3, [0.0] * 3) == 1
    assert len(index) == 31
    assert len(index.search(vectors[0], 40)) == 31


def test_wrong_dimension_is_refused() -> None:
    index = VectorIndex(DIM)
    with pytest.raises(ValueError, match="vectors must be"):
        index.add([1], np.ones((1, DIM + 1)), ["a"], [0.0])
    with pytest.raises(ValueError, match="query has dim"):
        index.search(np.ones(DIM + 1), 1)


@pytest.mark.parametrize(
    ("stream_ids", "t_from", "t_to"),
    [
        (["b"], None, None),
        (None, 100.0, 140.0),
        (["a", "c"], 100.0, None),
        (["b"], None, 150.0),
        (["c"], 120.0, 180.0),
    ],
)
def test_filters_are_exact_even_when_the_unfiltered_top_k_is_all_outside(
        stream_ids: list[str] | None, t_from: float | None, t_to: float | None) -> None:
    rng = np.random.default_rng(1)
    n, k = 300, 10
    query = unit(rng.standard_normal(DIM))
    streams = [STREAMS[i % 3] for i in range(n)]
    wallclocks = np.arange(n, dtype=np.float64)
    inside = np.array([(stream_ids is None or s in stream_ids) and (t_from is None or w >= t_from)
                       and (t_to is None or w <= t_to) for s, w in zip(streams, wallclocks)])
    # Out of scope: near-copies of the query. In scope: random directions.
    vectors = np.where(inside[:, None], unit(rng.standard_normal((n, DIM))),
                       unit(query + 0.01 * rng.standard_normal((n, DIM))))
    ids = np.arange(1, n + 1)
    index = VectorIndex(DIM)
    index.add(ids, vectors, streams, wallclocks)
    assert all(not inside[i - 1] for i, _ in index.search(query, k))

    found = index.search(query, k, stream_ids=stream_ids, t_from=t_from, t_to=t_to)

    scores = vectors[inside] @ query
    expected = ids[inside][np.argsort(-scores)[:k]]
    assert [i for i, _ in found] == list(expected)
    np.testing.assert_allclose([s for _, s in found], np.sort(scores)[::-1][:k], atol=1e-5)


@pytest.mark.parametrize(
    ("scope", "count"),
    [
        (dict(stream_ids=["nope"]), 0),
        (dict(stream_ids=[]), 0),
        (dict(t_from=1000.0), 0),
        (dict(t_from=5.0, t_to=4.0), 0),
        (dict(stream_ids=["a"], t_from=0.0, t_to=8.0), 3),  # k larger than the scope: the whole scope
    ],
)
def test_small_or_empty_scopes(scope: dict, count: int) -> None:
    index, vectors, _, _ = filled()
    found = index.search(vectors[0], 10, **scope)
    assert len(found) == count
    assert all(i in (1, 4, 7) for i, _ in found)


def test_remove_takes_ids_out_of_search_and_filters() -> None:
    index, vectors, _, _ = filled()
    assert index.remove([1, 4, 999]) == 2  # 999 was never there
    assert 1 not in {i for i, _ in index.search(vectors[0], 300)}
    assert len(index) == 298 and index.vector(1) is None
    assert {i for i, _ in index.search(vectors[0], 10, stream_ids=["a"], t_from=0.0, t_to=8.0)} == {7}


@pytest.mark.parametrize("limit", [None, 200])  # flat only; IVF from 200 vectors on
def test_snapshot_round_trip(tmp_path: Path, limit: int | None) -> None:
    index, vectors, _, _ = filled(ivf_min_vectors=limit)
    assert index.kind == ("ivf" if limit else "flat")
    index.snapshot(tmp_path)
    index.add([1000], vectors[:1], ["d"], [0.0])  # after the snapshot: not in it
    index.snapshot(tmp_path, epoch="e1", offsets={"segs:1": 41, "segs:0": 7})  # replaces the data file
    loaded = VectorIndex.load(tmp_path, ivf_min_vectors=limit)

    assert len(loaded) == 301 and loaded.kind == index.kind
    assert loaded.manifest == {"epoch": "e1", "offsets": {"segs:0": 7, "segs:1": 41}}
    for scope in (dict(), dict(stream_ids=["b", "d"]), dict(t_from=50.0, t_to=60.0)):
        assert loaded.search(vectors[7], 5, **scope) == index.search(vectors[7], 5, **scope)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert {k: manifest[k] for k in ("count", "max_id", "dim", "type")} == dict(
        count=301, max_id=1000, dim=DIM, type=index.kind)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([MANIFEST, manifest["file"]])


def test_index_type_follows_size_deterministically() -> None:
    """Flat below the threshold, IVF from it on, flat again under half of it; the same steps give the same index."""

    def grown() -> VectorIndex:
        index = VectorIndex(DIM, ivf_min_vectors=1000)
        rng = np.random.default_rng(3)
        for start in range(1, 1201, 100):
            index.add(np.arange(start, start + 100), rng.standard_normal((100, DIM)), ["a"] * 100, [0.0] * 100)
        return index

    index, twin = grown(), grown()
    assert index.kind == "ivf" and len(index) == 1200
    query = np.random.default_rng(4).standard_normal(DIM)
    assert index.search(query, 10) == twin.search(query, 10)
    # Scoped searches probe every list: exact, as the flat index would answer.
    exact = VectorIndex(DIM)
    rng = np.random.default_rng(3)
    for start in range(1, 1201, 100):
        exact.add(np.arange(start, start + 100), rng.standard_normal((100, DIM)), ["a"] * 100, [0.0] * 100)
    assert [i for i, _ in index.search(query, 10, stream_ids=["a"])] == [i for i, _ in exact.search(query, 10)]
    index.remove(np.arange(1, 800))
    assert index.kind == "flat" and len(index) == 401
    assert [i for i, _ in index.search(query, 5)] == [i for i, _ in exact.search(query, 300) if i >= 800][:5]


def test_load_without_snapshot_is_none(tmp_path: Path) -> None:
    assert VectorIndex.load(tmp_path / "missing") is None


def _data_file(directory: Path) -> Path:
    return directory / json.loads((directory / MANIFEST).read_text())["file"]


def _edit_manifest(**changes) -> Callable[[Path], None]:
    def edit(directory: Path) -> None:
        manifest = json.loads((directory / MANIFEST).read_text())
        (directory / MANIFEST).write_text(json.dumps({**manifest, **changes}))
    return edit


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda d: _data_file(d).write_bytes(_data_file(d).read_bytes()[:5000]), id="truncated-data"),
        pytest.param(lambda d: _data_file(d).write_bytes(b"\0" * 4096), id="garbage-data"),
        pytest.param(lambda d: _data_file(d).unlink(), id="missing-data"),
        pytest.param(lambda d: (d / MANIFEST).write_text("{not json"), id="garbage-manifest"),
        pytest.param(_edit_manifest(count=7), id="wrong-count"),
        pytest.param(_edit_manifest(dim=DIM * 2), id="wrong-dim"),
        pytest.param(_edit_manifest(max_id=5), id="wrong-max-id"),
    ],
)
def test_damaged_snapshot_is_ignored_with_a_log(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                damage: Callable[[Path], None]) -> None:
    index, _, _, _ = filled(50)
    index.snapshot(tmp_path)
    damage(tmp_path)
    with caplog.at_level(logging.WARNING, logger="memory_store.vector_index"):
        assert VectorIndex.load(tmp_path) is None
    assert "ignoring FAISS snapshot" in caplog.text


def test_concurrent_adds_and_searches() -> None:
    index = VectorIndex(DIM)
    rng = np.random.default_rng(3)
    vectors = unit(rng.standard_normal((2000, DIM)))
    errors: list[BaseException] = []

    def adder(start: int) -> None:
        for i in range(start, 2000, 2):
            index.add([i + 1], vectors[i : i + 1], [STREAMS[i % 3]], [float(i)])

    def searcher() -> None:
        try:
            for i in range(300):
                assert all(1 <= h <= 2000 for h, _ in index.search(vectors[i], 5, stream_ids=["a"]))
        except BaseException as exc:  # surfaced below: a thread's assertion is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=adder, args=(s,)) for s in (0, 1)] + [threading.Thread(target=searcher)
                                                                             for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(index) == 2000 and list(index.ids()) == list(range(1, 2001))
