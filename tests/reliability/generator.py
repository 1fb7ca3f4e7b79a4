"""The generator: K streams of numbered segments, published interleaved at a steady pace while a fault is
injected. Segments are cut once from the sample broadcast; each stream is one publishing session numbered
0..n-1, so the checker can tell gaps, duplicates and order from memory alone."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from contracts import messages
from pipelines.config import LivelensConfig
from pipelines.kafka.client import ensure_topics, make_producer
from pipelines.kafka.publish import new_session_id, segment_header
from pipelines.segmenter import MediaSegment


class StreamGenerator:
    def __init__(self, config: LivelensConfig, segments: list[MediaSegment], streams: list[str], *,
                 interval_s: float = 0.4, poison: frozenset[tuple[str, int]] = frozenset()):
        """``poison``: (stream, seq) whose payload is cut to a third: a segment no decoder can read."""
        self.config = config
        self.poison = poison
        self.segments = segments
        self.streams = streams
        self.interval_s = interval_s
        self.sent = 0
        self._thread = threading.Thread(target=self._publish, daemon=True, name="generator")
        self._error: BaseException | None = None

    @property
    def expected(self) -> dict[str, int]:
        return {stream: len(self.segments) for stream in self.streams}

    def start(self) -> StreamGenerator:
        self._thread.start()
        return self

    def join(self, timeout_s: float = 120) -> None:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise AssertionError(f"the generator did not finish within {timeout_s:.0f} s")
        if self._error is not None:
            raise self._error

    def _publish(self) -> None:
        try:
            ensure_topics(self.config.kafka)
            # The producer retries through a broker outage for up to 10 minutes (the faults are shorter).
            producer = make_producer(self.config.kafka, delivery_timeout_ms=600_000, max_block_ms=600_000,
                                     request_timeout_ms=5_000)
            start = datetime.now(UTC)
            sessions = {stream: new_session_id() for stream in self.streams}
            for media in self.segments:
                for stream in self.streams:
                    payload = media.payload[:len(media.payload) // 3] if (stream, media.seq) in self.poison \
                        else media.payload
                    header = segment_header(media, stream_id=stream, tenant_id="default", start=start,
                                            session=sessions[stream]).model_copy(update={"payload_bytes": len(payload)})
                    for chunk_header, chunk in messages.chunk_segment(header, payload,
                                                                      self.config.kafka.max_message_bytes):
                        value, headers = messages.segment_record(chunk_header, chunk)
                        producer.send(self.config.kafka.topic("segments"), key=stream.encode(), value=value,
                                      headers=headers)
                    self.sent += 1
                time.sleep(self.interval_s)
            producer.flush(timeout=600)
            producer.close()
        except BaseException as exc:  # reported by join()
            self._error = exc
