"""Clips: a remuxed span shows exactly the source's frames; segments are found by the ledger and read from the
archive or from Kafka by offset (a real broker, a real redis-server); spans that aged out answer 410."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import av
import numpy as np
import pytest
import redis
from kafka import KafkaAdminClient, TopicPartition

from contracts import messages
from pipelines.clip_media import remux
from pipelines.clips import ClipCutter, ClipError, ClipKeeper, clip_url
from pipelines.config import LivelensConfig
from pipelines.kafka.client import ensure_topics
from pipelines.kafka.publish import SegmentPublisher
from pipelines.segmenter import iter_segments

SOURCE = "bottle-detection.mp4"  # a real H.264 clip with B-frames, 640x360, ~40 s, GOPs of ~4 s


def decoded(data: bytes | Path, offset_s: float = 0.0) -> list[tuple[float, np.ndarray]]:
    """(stream seconds, RGB) of every frame in presentation order, the first frame at ``offset_s``."""
    with av.open(io.BytesIO(data) if isinstance(data, bytes) else str(data)) as container:
        frames = list(container.decode(video=0))
    first = frames[0].time
    return [(f.time - first + offset_s, f.to_ndarray(format="rgb24")) for f in frames]


def assert_same_frames(clip: list[tuple[float, np.ndarray]], truth: list[tuple[float, np.ndarray]]) -> None:
    """The clip's frames are the source's at the same times (time bases differ: to within a millisecond)."""
    first = min(range(len(truth)), key=lambda i: abs(truth[i][0] - clip[0][0]))
    expected = truth[first:first + len(clip)]
    assert len(expected) == len(clip)
    for (t, img), (t_src, img_src) in zip(clip, expected):
        assert abs(t - t_src) < 1e-3, f"frame at {t:.4f} s of the clip is at {t_src:.4f} s in the source"
        assert np.array_equal(img, img_src), f"frame at {t:.3f} s differs from the source's: re-encoded?"


@pytest.fixture(scope="module")
def source(real_video_dir: Path) -> Path:
    return real_video_dir / SOURCE


@pytest.fixture(scope="module")
def truth(source: Path) -> list[tuple[float, np.ndarray]]:
    return decoded(source)


@pytest.fixture(scope="module")
def pieces(source: Path):
    """(location, payload) per segment, as the ledger and Kafka would give them."""
    from pipelines.clips import SegmentLocation

    out = []
    for s in iter_segments(str(source), target_s=2.0):
        loc = SegmentLocation(seq=s.seq, media_start_s=s.media_start_s, duration_s=s.duration_s, wallclock_start=0.0,
                              codec=s.codec, container="mpegts", width=s.width, height=s.height, topic="t",
                              partition=0, first_offset=s.seq, last_offset=s.seq, payload_bytes=len(s.payload))
        out.append((loc, s.payload))
    return out


def gop_starts(pieces) -> list[float]:
    """Stream seconds of every keyframe."""
    starts = []
    for loc, payload in pieces:
        with av.open(io.BytesIO(payload), format="mpegts") as c:
            starts += [loc.media_start_s + float(p.pts * p.time_base) - 10.0 for p in c.demux(video=0)
                       if p.size and p.is_keyframe]
    return starts


@pytest.mark.parametrize("t_from,t_to", [
    (0.0, 3.0),     # from the stream's first frame
    (5.3, 9.1),     # both ends inside GOPs
    (12.0, 31.5),   # across many segments
    (36.0, 60.0),   # past the end: the clip stops where the video does
])
def test_a_clip_shows_the_source_frames_of_the_span_cut_at_keyframes(pieces, truth, t_from, t_to):
    data, start, end = remux([p for p in pieces if p[0].media_end_s > t_from and p[0].media_start_s < t_to],
                             t_from, t_to)
    keyframes = gop_starts(pieces)
    video_end = pieces[-1][0].media_end_s
    # Cut at keyframes: the last one at or before the start, the first one at or after the end (or the video's end).
    assert start == pytest.approx(max(k for k in keyframes if k <= t_from + 1e-6), abs=1e-3)
    assert end == pytest.approx(min([k for k in keyframes if k >= t_to] + [video_end]), abs=1e-3)
    clip = decoded(data, offset_s=start)
    assert_same_frames(clip, truth)
    # Every source frame of [start, end) is in the clip, no more.
    assert len(clip) == sum(1 for t, _ in truth if start - 1e-3 <= t < end - 1e-3)
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.video[0]
        assert (c.format.name.split(",")[0], stream.codec_context.name, stream.width, stream.height) == \
            ("mov", "h264", 640, 360)


def test_a_clip_of_a_source_with_sound_carries_its_audio_over_the_same_span(real_video_dir):
    from pipelines.clips import SegmentLocation

    pieces = []
    for seg in iter_segments(str(real_video_dir / "friday.mp4"), target_s=2.0):
        assert tuple(seg.tracks) == ("video", "audio")
        loc = SegmentLocation(seq=seg.seq, media_start_s=seg.media_start_s, duration_s=seg.duration_s,
                              wallclock_start=0.0, codec=seg.codec, container=seg.container, width=seg.width,
                              height=seg.height, topic="t", partition=0, first_offset=seg.seq, last_offset=seg.seq,
                              payload_bytes=len(seg.payload))
        pieces.append((loc, seg.payload))
        if seg.media_start_s > 12:
            break
    data, start, end = remux(pieces, 3.0, 9.0)
    with av.open(io.BytesIO(data)) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
        rate = c.streams.audio[0].rate
    # The sound lasts as long as the clip's video, give or take an AAC frame at each end, and is not silence.
    channels = 2 if samples.size > (end - start) * rate * 1.5 else 1
    assert samples.size / channels / rate == pytest.approx(end - start, abs=0.1)
    assert float(np.abs(samples).max()) > 0.01


def test_a_span_without_frames_is_refused(pieces):
    with pytest.raises(ClipError) as caught:
        remux(pieces[-1:], pieces[-1][0].media_end_s + 1, pieces[-1][0].media_end_s + 5)
    assert caught.value.status == 404


@pytest.mark.parametrize("keys,tenant,expected", [
    ({}, "default", "/v1/streams/news/clip?from=8.000&to=14.500"),
    ({}, "acme", "/v1/streams/news/clip?from=8.000&to=14.500&tenant_id=acme"),
    ({"k": "acme"}, "acme", "/v1/streams/news/clip?from=8.000&to=14.500"),  # the key names the tenant
])
def test_clip_urls_pad_the_span_and_name_the_tenant_only_without_keys(keys, tenant, expected):
    config = LivelensConfig(clips=dict(margin_s=2.0), serve=dict(api_keys=keys))
    assert clip_url(config, tenant, "news", 10.0, 12.5) == expected


# -- on a real broker and redis-server ----------------------------------------------------------------------


def test_clips_come_from_the_archive_or_kafka_until_their_retention_runs_out(tmp_path, kafka_broker, redis_server,
                                                                            source, truth):
    prefix = f"c{uuid.uuid4().hex[:10]}."
    # 100 kB records: segments travel in several chunks, so reads by offset reassemble them.
    kafka = dict(bootstrap=kafka_broker.address, topic_prefix=prefix, partitions=1, max_message_bytes=100_000)
    archived = LivelensConfig(kafka=kafka, redis=dict(url=redis_server.address),
                              archive=dict(url=str(tmp_path / "archive")))
    kafka_only = archived.model_copy(update={"archive": archived.archive.model_copy(update={"url": None})})
    with SegmentPublisher(kafka=archived.kafka) as publisher:
        stats = publisher.publish(str(source), stream_id="shop", tenant_id="acme", pace="fast")
    assert stats.chunked_segments > 0
    client = redis.Redis.from_url(redis_server.address)
    kept = ClipKeeper(archived, client).keep_retained()
    assert kept == stats.segments
    assert len(list((tmp_path / "archive" / "acme" / "shop").glob("*.seg"))) == kept

    from_archive, from_kafka = ClipCutter(archived, client), ClipCutter(kafka_only, client)
    a, k = from_archive.cut("acme", "shop", 10.0, 20.0), from_kafka.cut("acme", "shop", 10.0, 20.0)
    assert (a.from_archive, a.from_kafka, k.from_archive, k.from_kafka) == (len(a.segments), 0, 0, len(k.segments))
    assert a.data == k.data, "the archive and Kafka hold different bytes for the same segments"
    assert_same_frames(decoded(k.data, offset_s=k.start_s), truth)
    # Times as ISO 8601 map to stream time through the segments' wall clocks.
    locations = from_kafka.ledger.covering("acme", "shop", 0.0, 1e9)
    iso = datetime.fromtimestamp(locations[0].wallclock_start + 7.25, UTC).isoformat()
    assert from_kafka.stream_seconds("acme", "shop", iso) == pytest.approx(7.25, abs=1e-3)

    # The command line writes the same clip, times given as ISO 8601 or stream seconds.
    env = {**os.environ, "LIVELENS_KAFKA_BOOTSTRAP": kafka_broker.address, "LIVELENS_REDIS_URL": redis_server.address,
           "LIVELENS_KAFKA__TOPIC_PREFIX": prefix, "LIVELENS_KAFKA__MAX_MESSAGE_BYTES": "100000"}
    out = tmp_path / "clip.mp4"
    run = subprocess.run([sys.executable, "-m", "pipelines.cli", "clip", "shop", "--tenant", "acme", "--from",
                          datetime.fromtimestamp(locations[0].wallclock_start + 10.0, UTC).isoformat(), "--to", "20",
                          "-o", str(out)], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes() == k.data
    missing = subprocess.run([sys.executable, "-m", "pipelines.cli", "clip", "shop", "--from", "0", "--to", "5",
                              "-o", str(tmp_path / "none.mp4")], env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "not_found" in missing.stderr  # tenant "default" has no stream shop

    # Another tenant's stream does not exist for this one.
    with pytest.raises(ClipError) as other:
        from_kafka.cut("globex", "shop", 10.0, 20.0)
    assert (other.value.status, other.value.code) == (404, "not_found")

    # Kafka no longer has the segments (the topic was recreated; tansu has no DeleteRecords to move a partition's
    # start as retention does): the archive still serves them, Kafka alone answers 410.
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.address)
    try:
        admin.delete_topics([archived.kafka.topic("segments")])
    finally:
        admin.close()
    ensure_topics(archived.kafka)
    assert from_archive.cut("acme", "shop", 0.0, 5.0).from_archive > 0
    with pytest.raises(ClipError) as gone:
        from_kafka.cut("acme", "shop", 0.0, 5.0)
    assert gone.value.status == 410 and "Kafka no longer holds" in gone.value.message
    assert "no archive is configured" in gone.value.message

    # The archive's retention passes them too (re-keeping the stream applies it): now both answers are gone.
    short = archived.model_copy(update={"archive": archived.archive.model_copy(update={"retention_s": 1.0})})
    newest = locations[-1]
    segment = messages.VideoSegment(tenant_id="acme", stream_id="shop", seq=newest.seq, codec=newest.codec,
                                    wallclock_start=datetime.fromtimestamp(newest.wallclock_start, UTC),
                                    media_start_s=newest.media_start_s, duration_s=newest.duration_s,
                                    width=newest.width, height=newest.height, payload_bytes=newest.payload_bytes)
    ClipKeeper(short, client).keep(segment, from_archive.archive.get("acme", "shop", newest.segment_id),
                                   TopicPartition(newest.topic, newest.partition), [newest.first_offset])
    assert len(list((tmp_path / "archive" / "acme" / "shop").glob("*.seg"))) < 3
    with pytest.raises(ClipError) as gone:
        ClipCutter(short, client).cut("acme", "shop", 0.0, 5.0)
    assert gone.value.status == 410 and "archive's retention" in gone.value.message


def test_a_span_older_than_the_ledger_keeps_answers_410(redis_server, pieces):
    """Locations are forgotten past memory.retention_s (no archive): the span is gone, not missing."""
    config = LivelensConfig(redis=dict(url=redis_server.address), memory=dict(retention_s=10.0))
    client = redis.Redis.from_url(redis_server.address)
    keeper = ClipKeeper(config, client)
    for loc, payload in pieces:
        segment = messages.VideoSegment(tenant_id="acme", stream_id="shop", seq=loc.seq, codec=loc.codec,
                                        wallclock_start=datetime.fromtimestamp(1e9 + loc.media_start_s, UTC),
                                        media_start_s=loc.media_start_s, duration_s=loc.duration_s, width=loc.width,
                                        height=loc.height, payload_bytes=len(payload))
        keeper.keep(segment, payload, TopicPartition("t", 0), [loc.seq])
    with pytest.raises(ClipError) as gone:
        ClipCutter(config, client).cut("acme", "shop", 0.0, 5.0)
    assert gone.value.status == 410 and "aged out" in gone.value.message
