"""Transcript lines in memory: stored with their segment, searched with MiniLM, kept through restarts, expired.

A real redis-server per test and the real all-MiniLM-L6-v2 (what the transcript stage embeds with).
"""

from __future__ import annotations

import numpy as np
import pytest

from memory_store import keys
from memory_store.transcripts import TranscriptHit
from operators.frames import StageError
from operators.ocr import TextEmbedder
from operators.transcribe import Transcript
from operators.transcript import TranscriptLine, Word
from tests.memory_store.batches import WALL0, make_batch
from tests.memory_store.conftest import StoreFactory


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    return TextEmbedder()


def transcript(embedder: TextEmbedder, *lines: TranscriptLine) -> Transcript:
    return Transcript(list(lines), embedder.embed([line.text for line in lines]))


STORM = TranscriptLine(0.4, 1.8, "the storm will reach the coast tonight", "caption", channel="CC1")
GOAL = TranscriptLine(3.2, 3.9, "what a goal in the final minute", "asr", confidence=0.4, channel="audio:und",
                      words=(Word("what", 3.2, 3.4, 0.5), Word("a", 3.4, 3.5, 0.3)))


def test_lines_are_stored_with_their_segment_and_found_by_meaning(open_store: StoreFactory, embedder) -> None:
    store = open_store()
    store.write(make_batch(seq=0), transcript=transcript(embedder, STORM))
    store.write(make_batch(seq=1), transcript=transcript(embedder, GOAL))

    [hit] = store.search_transcript("acme", embedder.embed(["when was the storm mentioned"])[0], k=1)
    assert isinstance(hit, TranscriptHit)
    assert (hit.text, hit.source, hit.channel, hit.confidence, hit.language) == (STORM.text, "caption", "CC1", 1.0,
                                                                                    "en")
    assert (hit.t_start, hit.t_end, hit.wallclock_start, hit.wallclock_end) == pytest.approx(
        (0.4, 1.8, WALL0 + 0.4, WALL0 + 1.8))
    assert hit.score > 0.5
    # The frame on screen when the line began gives the evidence its picture.
    assert hit.thumbnail == keys.thumbnail("acme", make_batch(seq=0).segment.frame_key(0.0))
    [goal] = store.search_transcript("acme", embedder.embed(["a late goal"])[0], k=1)
    assert goal.words == [["what", 3.2, 3.4, 0.5], ["a", 3.4, 3.5, 0.3]] and goal.seq == 1
    # Scoped like frames: by stream and by wall-clock start.
    assert store.search_transcript("acme", embedder.embed(["storm"])[0], stream_ids=["cam-2"]) == []
    assert [h.text for h in store.search_transcript("acme", embedder.embed(["storm"])[0], t_from=WALL0 + 2)] == [
        GOAL.text]
    assert [line.text for line in store.transcript("acme", "cam-1")] == [STORM.text, GOAL.text]
    assert store.stats()["transcript_indexed"] == 2


def test_a_replay_adds_nothing_and_a_restart_rebuilds_the_index(open_store: StoreFactory, embedder) -> None:
    store = open_store()
    lines = transcript(embedder, STORM, GOAL)
    store.write(make_batch(seq=0), transcript=lines)
    ids_before = store.tier.r.zrange(keys.line_ids("acme"), 0, -1, withscores=True)
    assert store.write(make_batch(seq=0), transcript=lines) is None  # the segment replayed
    assert store.tier.r.zrange(keys.line_ids("acme"), 0, -1, withscores=True) == ids_before

    restarted = open_store()  # a restarted memory actor: the index comes back from Redis
    query = embedder.embed(["storm warning for the coast"])[0]
    assert [h.frame_key for h in restarted.search_transcript("acme", query, k=2)] == [
        h.frame_key for h in store.search_transcript("acme", query, k=2)]
    assert restarted.stats()["transcript_indexed"] == 2


def test_lines_leave_with_retention_and_purge(open_store: StoreFactory, embedder) -> None:
    store = open_store(retention_s=5.0)
    store.write(make_batch(seq=0), transcript=transcript(embedder, STORM))
    store.write(make_batch(seq=1), transcript=transcript(embedder, GOAL))
    store.write(make_batch(seq=3))  # the stream's newest frame is now 8 s in: lines starting before 3 s go
    assert [line.text for line in store.transcript("acme", "cam-1")] == [GOAL.text]
    assert [h.text for h in store.search_transcript("acme", embedder.embed(["storm"])[0], k=5)] == [GOAL.text]

    store.purge_stream("acme", "cam-1")
    assert store.transcript("acme", "cam-1") == [] and store.stats()["transcript_indexed"] == 0


def test_bad_embeddings_never_become_durable(open_store: StoreFactory, embedder) -> None:
    store = open_store()
    with pytest.raises(StageError) as raised:
        store.write(make_batch(seq=0), transcript=Transcript([STORM], np.zeros((1, 384), np.float32)))
    assert raised.value.code == "bad_transcript"
    assert store.transcript("acme", "cam-1") == []
