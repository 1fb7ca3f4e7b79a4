"""Backfill against the live operators, on a real redis-server and the tiny CLIP.

The reference for "what live ingest stores" is the live path minus Ray and Kafka: the
publisher's header through the wire format and `segment_info`, then the operators the
actors wrap, one segment at a time in stream order.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import redis

from contracts import messages
from memory_store import keys
from memory_store.service import MemoryStore
from operators.boundaries import BoundaryDetector
from operators.compress import TokenDropCompressor
from operators.config import OcrConfig
from operators.decode import SegmentDecoder
from operators.encode import VisionEncoder
from operators.frames import FrameBatch
from operators.parallel_decode import ParallelDecoder
from pipelines.cli.sample_video import write_sample_video
from pipelines.config import LivelensConfig
from pipelines.ingest.backfill import Backfill, BackfillJob
from pipelines.ingest.recordings import consecutive_starts, media_duration_s
from pipelines.ingest.source import segment_info
from pipelines.kafka.publish import segment_header
from pipelines.segmenter import iter_segments

REPO = Path(__file__).resolve().parents[1]
START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TENANT = "default"


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("backfill") / "broadcast.mp4"
    write_sample_video(out, duration_s=20.0)
    return out


def make_config(tmp_path: Path, tiny_models: dict[str, Path], fused: str = "auto") -> LivelensConfig:
    # batch_frames=4: two 2-frame segments per encoder batch, so batches span segments.
    return LivelensConfig(data_dir=tmp_path / "data",
                          encode=dict(model=str(tiny_models["clip"]), batch_frames=4, fused=fused),
                          ocr=dict(enabled=False))


def store_for(redis_server, db: int, config: LivelensConfig) -> MemoryStore:
    # The URL names db 0, and a db in the URL wins over from_url's db argument.
    url = redis_server.address.rsplit("/", 1)[0] + f"/{db}"
    return MemoryStore(redis.Redis.from_url(url), config.memory)


def memory(store: MemoryStore) -> dict[str, tuple[int, np.ndarray, np.ndarray, float, str, bool]]:
    """frame key -> (id, embedding, kept positions, wallclock, on-screen text, begins an event): what memory
    holds of each frame."""
    frame_keys = [k.decode() for k in store.tier.r.zrange(keys.ids(TENANT), 0, -1)]
    return {r.frame_key: (r.id, r.embedding, r.positions, r.wallclock_start, r.text, r.boundary)
            for r in store.tier.frames(TENANT, frame_keys)}


def assert_same_memory(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for key in a:
        assert np.allclose(a[key][1], b[key][1], atol=1e-5), key
        assert np.array_equal(a[key][2], b[key][2]), key  # the kept mask, as stored
        assert a[key][3:] == b[key][3:], key


def live_reference(video: Path, config: LivelensConfig, store: MemoryStore) -> None:
    """Each segment as a live source sees it: header over the wire, then the operators one segment at a time."""
    decoder = SegmentDecoder(config.decode, frame_px=config.decode.frame_px)
    encoder = VisionEncoder(config.encode, str(config.encode.model))
    compressor = TokenDropCompressor(config.compress)
    boundaries = BoundaryDetector(config.boundaries)  # beside the compressor, as in the live CompressActor
    for media in iter_segments(str(video)):
        header = segment_header(media, stream_id="cam", tenant_id=TENANT, start=START)
        value, headers = messages.segment_record(header, media.payload)
        received, _ = messages.decode(value, expect=messages.VideoSegment, headers=headers)
        frames = decoder.decode(segment_info(received), media.payload)
        store.write(boundaries.mark(compressor.compress(encoder.encode([frames])[0])))


@pytest.mark.parametrize("fused", ["off", "on"])  # on: encode and compress in one pass (on the CPU here)
def test_backfill_stores_what_live_ingest_stores(tmp_path, redis_server, tiny_models, video, fused):
    config = make_config(tmp_path, tiny_models, fused)
    live = store_for(redis_server, 1, config)
    live_reference(video, config, live)
    backfilled = store_for(redis_server, 0, config)
    summary = Backfill(config, backfilled, workers=2, progress=False).run(
        [BackfillJob(video, "cam", wallclock_start=START)])
    assert summary.segments == 10 and summary.frames == 20 and not summary.dead_letters
    assert summary.stream_seconds == pytest.approx(20.0) and summary.speedup > 1
    assert_same_memory(memory(backfilled), memory(live))
    assert any(m[5] for m in memory(live).values()), "the sample's scene cuts begin events"


def test_rerun_changes_nothing(tmp_path, redis_server, tiny_models, video):
    config = make_config(tmp_path, tiny_models)
    store = store_for(redis_server, 0, config)
    backfill = Backfill(config, store, workers=1, progress=False)
    job = BackfillJob(video, "cam", wallclock_start=START)
    backfill.run([job])
    before = memory(store)
    again = backfill.run([job])
    assert (again.segments, again.segments_skipped, again.frames) == (0, 10, 0)  # the manifest: nothing redone
    (manifest,) = store.tier.r.keys("ll:{default}:backfill:*")
    store.tier.r.delete(manifest)
    replayed = backfill.run([job])
    assert (replayed.segments, replayed.segments_replayed, replayed.frames) == (10, 10, 0)  # idempotent writes
    after = memory(store)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}  # same frames, same ids
    assert_same_memory(after, before)


_CHILD = """
import sys, time, redis
from datetime import datetime
from pathlib import Path
from memory_store.service import MemoryStore
from pipelines.ingest.backfill import Backfill, BackfillJob
from operators.config import OcrConfig
from pipelines.config import LivelensConfig

class SlowStore(MemoryStore):
    # Slow enough that the parent can kill the run between segments.
    def write(self, batch, texts=None, **kwargs):
        time.sleep(0.4)
        return super().write(batch, texts, **kwargs)

if __name__ == "__main__":
    address, model, data_dir, video, start = sys.argv[1:]
    config = LivelensConfig(data_dir=Path(data_dir), encode=dict(model=model, batch_frames=4),
                            ocr=dict(enabled=False))
    store = SlowStore(redis.Redis.from_url(address), config.memory)
    job = BackfillJob(Path(video), "cam", wallclock_start=datetime.fromisoformat(start))
    Backfill(config, store, workers=2, progress=False).run([job])
"""


def test_killed_run_resumes_to_the_same_memory(tmp_path, redis_server, tiny_models, video):
    config = make_config(tmp_path, tiny_models)
    child = tmp_path / "child.py"
    child.write_text(_CHILD)
    client = redis.Redis.from_url(redis_server.address)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(child), redis_server.address, str(tiny_models["clip"]),
                             str(tmp_path / "data"), str(video), START.isoformat()], env=env, cwd=REPO,
                            start_new_session=True)  # its decode workers are killed with it
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            found = client.keys("ll:{default}:backfill:*")
            if found and int(client.hget(found[0], "next_seq")) >= 3:
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the child finished (or failed) before it could be killed"
    done = int(client.hget(client.keys("ll:{default}:backfill:*")[0], "next_seq"))
    assert 3 <= done < 10

    resumed_store = store_for(redis_server, 0, config)
    resumed = Backfill(config, resumed_store, workers=2, progress=False).run(
        [BackfillJob(video, "cam", wallclock_start=START)])
    assert resumed.segments_skipped == done and resumed.segments == 10 - done
    uninterrupted = store_for(redis_server, 1, config)
    Backfill(config, uninterrupted, workers=2, progress=False).run([BackfillJob(video, "cam", wallclock_start=START)])
    # Equal kept masks prove the compressor state was restored: without it the first frame
    # after the resume point would be kept whole.
    assert_same_memory(memory(resumed_store), memory(uninterrupted))


class _Crash(Exception):
    """Stands in for the process dying between two segments."""


class CrashingStore(MemoryStore):
    """Dies after ``survive`` segment writes, as a killed process would: nothing after them happens."""

    def __init__(self, *args, survive: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.survive = survive

    def write(self, batch, texts=None, **kwargs):
        if self.survive == 0:
            raise _Crash
        self.survive -= 1
        return super().write(batch, texts, **kwargs)


def test_resume_restores_the_ocr_reader_state(tmp_path, redis_server, tiny_models, video):
    # change_threshold 0.1: most frames reuse the last read, so a reader restarted empty would
    # read (and store) differently from one restored from the manifest.
    config = make_config(tmp_path, tiny_models).model_copy(
        update={"ocr": OcrConfig(enabled=True, change_threshold=0.1)})
    job = BackfillJob(video, "cam", wallclock_start=START)
    url = redis_server.address
    crashing = CrashingStore(redis.Redis.from_url(url), config.memory, survive=5)
    with pytest.raises(_Crash):
        Backfill(config, crashing, workers=1, progress=False).run([job])
    resumed_store = store_for(redis_server, 0, config)
    resumed = Backfill(config, resumed_store, workers=1, progress=False).run([job])
    # Crashed at the 6th write, in the group of segments 4-5 (2 segments per batch_frames=4): the manifest's
    # last checkpoint is the end of segments 2-3's group, where the chain's state was the state after them.
    assert (resumed.segments_skipped, resumed.segments) == (4, 6)
    uninterrupted = store_for(redis_server, 1, config)
    Backfill(config, uninterrupted, workers=1, progress=False).run([job])
    stored = memory(uninterrupted)
    assert any("STORM WARNING" in frame[4] for frame in stored.values())  # OCR did read the headline
    assert_same_memory(memory(resumed_store), stored)


def test_parallel_decode_equals_one_decoder(tmp_path, video):
    config = LivelensConfig(data_dir=tmp_path)
    infos = [(segment_info(segment_header(m, stream_id="cam", tenant_id=TENANT, start=START)), m.payload)
             for m in iter_segments(str(video))]
    decoder = SegmentDecoder(config.decode, frame_px=config.decode.frame_px)
    expected = [decoder.decode(info, payload) for info, payload in infos]
    for workers in (1, 2):
        with ParallelDecoder(config.decode, workers=workers) as parallel:
            got = [frames for _, frames in parallel.decode(infos)]
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            assert isinstance(a, FrameBatch)
            assert a.segment == b.segment and np.array_equal(a.pts_s, b.pts_s)
            assert np.array_equal(a.images, b.images) and a.thumbnails == b.thumbnails


def test_parallel_decode_hands_back_bad_segments_in_place(tmp_path, video):
    config = LivelensConfig(data_dir=tmp_path)
    segments = [(segment_info(segment_header(m, stream_id="cam", tenant_id=TENANT, start=START)), m.payload)
                for m in iter_segments(str(video))][:3]
    info, payload = segments[1]
    segments[1] = (info, payload[: len(payload) // 4 // 188 * 188])  # cut short, on a TS packet boundary
    with ParallelDecoder(config.decode, workers=2) as parallel:
        results = list(parallel.decode(segments))
    assert [i.seq for i, _ in results] == [0, 1, 2]
    assert isinstance(results[0][1], FrameBatch) and isinstance(results[2][1], FrameBatch)
    assert results[1][1].code == "truncated_segment" and results[1][1].stage == "decode"


def test_start_time_comes_from_metadata_else_modification_time(tmp_path, redis_server, tiny_models, video, caplog):
    config = make_config(tmp_path, tiny_models)
    backfill = Backfill(config, store_for(redis_server, 0, config), workers=1, progress=False)
    # No creation_time (most archives): the file's modification time minus its duration, with a warning.
    unstamped = tmp_path / "archive.mp4"
    unstamped.write_bytes(video.read_bytes())
    ended = START.timestamp() + 3600
    os.utime(unstamped, (ended, ended))
    with caplog.at_level(logging.WARNING, logger="pipelines.ingest.backfill"):
        summary = backfill.run([BackfillJob(unstamped, "archive")])
    assert summary.segments == 10
    assert "no creation_time" in caplog.text and "modification time" in caplog.text
    archive = [v for k, v in memory(backfill.store).items() if k.startswith(f"{TENANT}/archive/")]
    assert min(v[3] for v in archive) == pytest.approx(ended - media_duration_s(unstamped), abs=0.05)

    stamped = tmp_path / "stamped.mp4"
    _remux_with_creation_time(video, stamped, "2026-03-01T12:00:00.000000Z")
    summary = backfill.run([BackfillJob(stamped, "cam")])
    assert summary.segments == 10
    first = min(memory(backfill.store).values(), key=lambda v: v[3])
    assert first[3] == pytest.approx(START.timestamp())


def test_one_start_for_several_files_follows_on(video):
    """`--start` with several files: the first starts then, each later one where the one before ends."""
    starts = consecutive_starts([video, video, video], START)
    duration = media_duration_s(video)
    assert [s.timestamp() - START.timestamp() for s in starts] == pytest.approx([0, duration, 2 * duration])


def _remux_with_creation_time(source: Path, out: Path, creation_time: str) -> None:
    import av

    with av.open(str(source)) as src, av.open(str(out), "w") as dst:
        dst.metadata["creation_time"] = creation_time
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.size:
                packet.stream = stream
                dst.mux(packet)
