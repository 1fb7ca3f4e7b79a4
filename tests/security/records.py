"""Valid records of each message kind, encoded by the public encoder, for the fuzz tests to damage."""

from __future__ import annotations

from datetime import UTC, datetime

from contracts import messages
from tests.legacy_records import framed

_AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def sample_record(kind: str) -> bytes:
    evidence = messages.Evidence(stream_id="news", frame_key="acme/news/3/6.000", t_start=6.0, t_end=7.0,
                                 wallclock_start=_AT, wallclock_end=_AT, score=0.8, segment_seq=3)
    built = {
        "query": lambda: messages.Query(tenant_id="acme", stream_ids=["news"], text="storm warning", top_k=3,
                                        scope=messages.TimeScope(since_s=300)),
        "segment": lambda: messages.VideoSegment(tenant_id="acme", stream_id="news", seq=3, codec="h264",
                                                 wallclock_start=_AT, media_start_s=6.0, duration_s=2.0, width=640,
                                                 height=360, payload_bytes=188 * 4),
        "alert": lambda: messages.Alert(tenant_id="acme", stream_id="news", kind="standing_query", query_id="q1",
                                        state="MATCH", event="match", score=0.8, reason="matched",
                                        evidence=[evidence]),
        "answer": lambda: messages.Answer(tenant_id="acme", query_id="q1", answer="a storm", extractive=True,
                                          evidence=[evidence]),
        "dead_letter": lambda: messages.DeadLetter(tenant_id="acme", source_topic="livelens.video-segments",
                                                   partition=0, offset=7, stage="decode", code="decode_error",
                                                   reason="corrupt"),
    }[kind]()
    if kind == "segment":
        # A segment's metadata travels in a record header under wire contract 2; from the value alone a segment
        # decodes in contract 1's framing (still read), which keeps every byte of it fuzzable here.
        return framed(built, b"\x47" * 188 * 4)
    return messages.encode(built)
