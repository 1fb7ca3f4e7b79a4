"""Live sources: a URL read as it arrives, for as long as the publisher runs, surviving drops and restarts.

`live_segments` cuts a URL with `pipelines.segmenter` and, when the source cannot be opened (not up yet),
its connection drops, or a live stream ends (a camera rebooting, an encoder restarted, nginx-rtmp's
publisher gone), waits with capped backoff (`pipelines.reconnect`) and reconnects. The stream's timeline
goes on across the outage: the next segment starts as long after the last one as the source was silent,
and carries that silence as ``gap_before_s``, so memory records the gap (``/v1/streams``: ``gaps``,
``gap_s``). Segment numbers go on too: one publishing session covers every reconnect.

A bad source (no video track, a codec no container carries, a protocol this FFmpeg lacks) is not an
outage: it raises SourceError at once. A source with a known duration (a VOD playlist, a progressive file
over HTTP) that ends has ended: no reconnect.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping

from pipelines.reconnect import Backoff, SourceWait
from pipelines.segmenter import CLOCK_HZ, MediaSegment, SourceError, Timeline, segments_of

log = logging.getLogger(__name__)


def live_segments(url: str, *, target_s: float = 2.0, reconnect: Backoff | None = Backoff(),
                  options: Mapping[str, str] | None = None, stop: threading.Event | None = None
                  ) -> Iterator[MediaSegment]:
    """Segments of ``url`` numbered from 0 across reconnects. ``reconnect`` None: the first drop (or the end)
    ends the iteration (SourceError for a drop). ``stop``: set it to end a wait for the source.
    Raises `pipelines.reconnect.SourceGone` when the source stays away past ``reconnect.give_up_after_s``."""
    if target_s <= 0:
        raise ValueError(f"target_s must be positive, got {target_s}")
    target_ticks = round(target_s * CLOCK_HZ)
    timeline = Timeline()
    seq = 0
    outage: SourceWait | None = None
    live = True  # until the source says otherwise: a source never reached is waited for
    while stop is None or not stop.is_set():
        try:
            for media in segments_of(url, target_ticks, timeline, options):
                if outage is not None:
                    log.warning("%s is back after %.1f s (%d attempts); %.1f s of stream time without video",
                                url, outage.away_s, outage.attempt, media.gap_before_s)
                    outage = None
                live = media.live
                yield media.numbered(seq)
                seq += 1
            reason = "the source ended the stream"
        except SourceError as exc:
            # A source with an end (a progressive file) that dropped would start over from its beginning:
            # FFmpeg's own HTTP reconnects resume it, and past those it is an error, not an outage.
            if not exc.retryable or reconnect is None or not live:
                raise
            reason = str(exc)
        if reconnect is None or not live:
            return
        if outage is None:
            outage = SourceWait(url, reconnect, stop)
        if not outage.wait(reason):
            return
        timeline.silence_passes = True
