"""Live sources from real servers into a deployed pipeline: RTSP (GStreamer's server, over TCP and UDP),
RTMP (nginx's RTMP module fed by ffmpeg, with the clip's sound) and an HLS live playlist (nginx-rtmp's HLS
out over HTTP).

One scenario runs once for the module, every source at the same time, each a real clip published by
`SegmentPublisher` the way `livelens publish URL` does: the RTSP-over-TCP server is killed after its
first segment and started again 1.5 s later, and the publisher must resume by itself. The tests then
read what the scenario left: each stream answered with evidence in the right time range, the gap
recorded in memory, nothing after the restart lost, the RTSP timestamps repaired, the sound carried.
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pytest
from kafka import KafkaConsumer

from contracts import messages
from contracts.messages import DeadLetter, VideoSegment
from deploy.processes import start_redis
from memory_store.redis_tier import RedisTier
from operators.config import DecodeConfig, SpeechConfig
from operators.decode import SegmentDecoder
from operators.speech.vad import VoiceActivityDetector
from pipelines.api.client import Client
from pipelines.api.deployment import deploy_pipeline
from pipelines.ingest.source import segment_info
from pipelines.kafka.publish import SegmentPublisher
from pipelines.kafka.retained import retained_segments
from pipelines.reconnect import Backoff
from tests.integration.conftest import _kill_namespace, make_config, redis_client, wait_for
from tests.integration.test_pipeline import segment_ids, stored_segments
from tests.live_servers import push_rtmp, start_nginx, start_rtsp

# The scenario (deploy, four live sources at once, a restart, ingest) runs in the first test's setup:
# measured on the shared 2-core machine: 2.0 min at a load average of ~12, 4.5 min at ~30 (never quiet).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

CLIP_S = 6.166  # friday.mp4's video: 185 frames at 30 fps, keyframes every 2.33 s
GOP_S = 2.4
RESTART_AFTER_S = 1.5
QUICK = Backoff(initial_s=0.25, max_s=1.0)


@dataclass
class Published:
    """What one publisher sent, as its `on_segment` saw it."""

    url: str
    expect_s: float  # media seconds that must arrive (after the last gap) before it stops
    headers: list[VideoSegment] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    first: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def after_last_gap(self) -> list[VideoSegment]:
        gaps = [i for i, h in enumerate(self.headers) if h.gap_before_s > 0]
        return self.headers[gaps[-1]:] if gaps else self.headers

    def seen(self, header: VideoSegment) -> None:
        self.headers.append(header)
        self.first.set()
        if sum(h.duration_s for h in self.after_last_gap()) >= self.expect_s - 0.05 and self.complete():
            self.stop.set()

    complete = staticmethod(lambda: True)  # replaced where more must happen first (the restart)


def _publish(config, stream: str, p: Published, options: dict[str, str] | None = None) -> threading.Thread:
    def run() -> None:
        try:
            with SegmentPublisher(kafka=config.kafka) as publisher:
                publisher.publish(p.url, stream_id=stream, reconnect=QUICK, options=options, stop=p.stop,
                                  on_segment=p.seen)
        except BaseException as exc:  # the test reports it
            p.error = exc

    thread = threading.Thread(target=run, name=f"publish-{stream}", daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def scenario(ray_runtime, kafka_broker, tiny_models, tmp_path_factory, real_video_dir):
    work = tmp_path_factory.mktemp("live")
    redis = start_redis(work / "redis")
    config = make_config(work, kafka_broker, redis, tiny_models)
    handle = deploy_pipeline(config, detached=False, http=False)
    clip = real_video_dir / "friday.mp4"
    # The restarted camera plays friday twice over (12.3 s): long enough to kill it mid-stream.
    long_clip = work / "friday2.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-stream_loop", "1", "-i", str(clip), "-map",
                    "0:v:0", "-c", "copy", str(long_clip)], check=True)
    servers = {"tcp": start_rtsp(long_clip, work / "tcp"), "udp": start_rtsp(clip, work / "udp")}
    nginx = start_nginx(work)
    pushers = []
    started = time.time()
    published = {
        "rtsp-tcp": Published(servers["tcp"].address, 2 * CLIP_S),
        "rtsp-udp": Published(servers["udp"].address, CLIP_S),
        # A reader that connects after the encoder started (a loaded machine) joins mid-GOP: one GOP less.
        "rtmp": Published(nginx.rtmp("cam"), CLIP_S - GOP_S),
        "hls": Published(nginx.hls("cam"), CLIP_S - GOP_S),
    }
    try:
        restarted = threading.Event()
        published["rtsp-tcp"].complete = restarted.is_set
        threads = [
            _publish(config, "rtsp-tcp", published["rtsp-tcp"]),  # TCP is the publisher's default for RTSP
            _publish(config, "rtsp-udp", published["rtsp-udp"], {"rtsp_transport": "udp"}),
            # Connected before the encoder starts: nginx holds the player until the stream is published.
            _publish(config, "rtmp", published["rtmp"]),
        ]
        time.sleep(1.0)
        pushers.append(push_rtmp(clip, nginx.rtmp("cam"), work, audio=True))
        # The playlist is not there until nginx wrote its first fragment: the publisher waits for it. Read
        # from the playlist's first fragment (FFmpeg starts 3 from the live end by default).
        threads.append(_publish(config, "hls", published["hls"], {"live_start_index": "0"}))

        # The camera dies after its first segment and comes back 1.5 s later, playing from its start.
        assert published["rtsp-tcp"].first.wait(30), "no segment from the RTSP server"
        servers["tcp"].stop(sig=9)
        time.sleep(RESTART_AFTER_S)
        servers["tcp"] = start_rtsp(long_clip, work / "tcp", port=servers["tcp"].port)
        restarted.set()

        for thread in threads:
            thread.join(timeout=90)
        for stream, p in published.items():
            assert p.error is None, f"{stream}: {p.error!r}"
            assert p.stop.is_set(), f"{stream}: still publishing after 90 s ({len(p.headers)} segments)"
        dead = _wait_stored(config, published)
        yield config, published, dead, started
    finally:
        for p in published.values():
            p.stop.set()
        for process in [*servers.values(), *pushers]:
            process.stop(timeout_s=5)
        nginx.stop()
        _kill_namespace(config)
        del handle
        redis.stop()


def _wait_stored(config, published: dict[str, Published], timeout_s: float = 180) -> dict[str, list[DeadLetter]]:
    """Wait until every published segment is durable in memory or dead-lettered; the dead letters by stream."""
    want = {stream: len(p.headers) for stream, p in published.items()}
    consumer = KafkaConsumer(config.kafka.topic("dead_letters"), bootstrap_servers=config.kafka.bootstrap,
                             auto_offset_reset="earliest", group_id=None)
    dead: dict[str, list[DeadLetter]] = {}

    def done() -> bool:
        for records in consumer.poll(timeout_ms=200).values():
            for record in records:
                letter = messages.decode(record.value, expect=DeadLetter)[0]
                dead.setdefault(letter.stream_id, []).append(letter)
        return all(stored_segments(config, s) + len(dead.get(s, [])) >= n for s, n in want.items())

    try:
        wait_for(done, timeout_s, "every segment stored or dead-lettered")
    except AssertionError as exc:
        have = {s: stored_segments(config, s) for s in want}
        raise AssertionError(f"{exc}: stored {have} of {want}; dead letters: {dead}") from None
    finally:
        consumer.close()
    return dead


@pytest.mark.parametrize("stream", ["rtsp-tcp", "rtsp-udp", "rtmp", "hls"])
def test_each_live_protocol_is_ingested_and_answered_in_the_right_time_range(scenario, stream):
    config, published, dead, started = scenario
    headers = published[stream].headers
    # Every segment stored once, in one session; the ones allowed not to be: what arrived between the RTSP
    # camera's last keyframe and its death, or at the end of its stream, when too short to hold a frame of the
    # sampling grid (an empty_segment dead letter each).
    stored = segment_ids(config, stream)
    sent = [f"{h.session}-{h.seq}" for h in headers]
    missing = [i for i, name in enumerate(sent) if name not in stored]
    assert len(stored) == len(set(stored)) and set(stored) <= set(sent)
    assert [d.code for d in dead.get(stream, [])] == ["empty_segment"] * len(missing)
    grid_s = 1 / config.decode.sample_fps
    assert all((i + 1 < len(headers) and headers[i + 1].gap_before_s > 0)
               or (i == len(headers) - 1 and headers[i].duration_s < grid_s) for i in missing), missing
    tier = RedisTier(redis_client(config), config.memory)
    frame_keys = [k for name in stored for k in tier.segment_frame_keys("default", stream, name)]
    assert len(frame_keys) == len(set(frame_keys)) == tier.stream_info("default", stream).frames
    assert len({h.session for h in headers}) == 1 and [h.seq for h in headers] == list(range(len(headers)))
    # Stream time only goes forward, on the stream's clock and on the wall clock.
    for a, b in zip(headers, headers[1:]):
        assert b.media_start_s >= a.media_start_s + a.duration_s - 1e-3
        assert b.wallclock_start >= a.wallclock_start
    assert all(h.wallclock_source in ("rtcp", "arrival") for h in headers)

    # Ask about the second half of the stream: the evidence is from this stream and inside that span,
    # on both clocks.
    middle = headers[len(headers) // 2]
    end = headers[-1].wallclock_start.timestamp() + headers[-1].duration_s
    scope = messages.TimeScope(start=middle.wallclock_start, end=datetime.fromtimestamp(end + 0.5, UTC))
    answer = Client(config, timeout_s=60).ask_kafka(messages.Query(
        tenant_id="default", stream_ids=[stream], text="a man in an old film", scope=scope, top_k=3))
    assert answer.error is None and answer.evidence, answer
    for e in answer.evidence:
        assert e.stream_id == stream
        assert middle.wallclock_start.timestamp() - 0.01 <= e.wallclock_start.timestamp() <= end + 0.5
        assert middle.media_start_s - 0.01 <= e.t_start <= headers[-1].media_start_s + headers[-1].duration_s
        assert started - 5 <= e.wallclock_start.timestamp() <= time.time()


def test_rtsp_packets_without_timestamps_are_repaired_and_rtcp_gives_the_clock(scenario):
    """GStreamer's server sends its first packet before any RTCP sender report: FFmpeg gives it no PTS."""
    _, published, _, _ = scenario
    for stream in ("rtsp-tcp", "rtsp-udp"):
        headers = published[stream].headers
        assert headers[0].timestamp_repairs.get("missing", 0) >= 1, headers[0]
        # Once the sender's first report is in, wall-clock time is the camera's own.
        assert any(h.wallclock_source == "rtcp" for h in headers), stream


def test_a_restarted_source_resumes_by_itself_with_the_gap_recorded_and_nothing_after_it_lost(scenario):
    config, published, dead, _ = scenario
    headers = published["rtsp-tcp"].headers
    gapped = [h for h in headers if h.gap_before_s > 0]
    assert len(gapped) == 1, [(h.seq, h.gap_before_s) for h in headers]
    gap = gapped[0]
    # The camera was away at least as long as it was down (its restart and the reconnect add to it).
    assert RESTART_AFTER_S - 0.2 <= gap.gap_before_s <= 15
    # Everything the restarted camera sent is there: its whole clip, from its first keyframe on.
    after = published["rtsp-tcp"].after_last_gap()
    assert sum(h.duration_s for h in after) == pytest.approx(2 * CLIP_S, abs=0.1)

    info = RedisTier(redis_client(config), config.memory).stream_info("default", "rtsp-tcp")
    assert info is not None and len(info.gaps) == 1
    recorded = info.gaps[0]
    assert recorded.end_s == pytest.approx(gap.media_start_s, abs=1e-3)
    assert recorded.end_s - recorded.start_s == pytest.approx(gap.gap_before_s, abs=1e-3)
    assert recorded.segment.endswith(f"-{gap.seq}")
    for other in ("rtsp-udp", "rtmp", "hls"):
        other_info = RedisTier(redis_client(config), config.memory).stream_info("default", other)
        assert other_info is not None and other_info.gaps == ()


@pytest.mark.parametrize("stream", ["rtmp", "hls"])
def test_a_live_source_with_sound_carries_it_and_it_decodes_to_speech(scenario, stream):
    """The RTMP push carries friday.mp4's AAC track: its segments (RTMP in, and nginx's live HLS of it) hold
    the audio beside the video, and it decodes to the 16 kHz mono audio the transcript stage recognises, with
    the film's dialogue in it."""
    config, published, _, _ = scenario
    assert all(h.tracks == ["video", "audio"] for h in published[stream].headers), published[stream].headers
    decoder = SegmentDecoder(DecodeConfig(audio=True))
    audio = []
    for retained in retained_segments(config.kafka, config.kafka.topic("segments")):
        if retained.segment.stream_id != stream:
            continue
        batch = decoder.decode(segment_info(retained.segment), retained.payload)
        assert batch.audio is not None and batch.audio.start_s == pytest.approx(batch.segment.media_start_s, abs=0.1)
        # No gap: the segment's sound lasts as long as its video (AAC frames are 23 ms).
        assert len(batch.audio.samples) / 16_000 == pytest.approx(batch.segment.duration_s, abs=0.15)
        audio.append(batch.audio.samples)
    assert len(audio) == len(published[stream].headers)
    assert VoiceActivityDetector(SpeechConfig()).regions(np.concatenate(audio))  # the dialogue is speech to the VAD
