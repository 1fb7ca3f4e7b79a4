"""The backoff a live publisher waits with: capped, jittered down only, stoppable, and giving up when told."""

from __future__ import annotations

import threading
import time

import pytest

from pipelines.reconnect import Backoff, SourceGone, SourceWait


def test_delays_double_up_to_the_cap_and_jitter_only_shortens_them():
    backoff = Backoff(initial_s=0.5, max_s=4.0)
    for attempt, full in enumerate([0.5, 1.0, 2.0, 4.0, 4.0, 4.0], start=1):
        delays = [backoff.delay(attempt) for _ in range(50)]
        assert all(0.75 * full <= d <= full for d in delays), (attempt, min(delays), max(delays))


@pytest.mark.parametrize("bad", [dict(initial_s=0), dict(initial_s=5, max_s=1), dict(multiplier=0.5)])
def test_nonsense_backoffs_are_refused(bad):
    with pytest.raises(ValueError):
        Backoff(**bad)


def test_a_wait_logs_what_it_waits_for_and_a_stop_ends_it(caplog):
    stop = threading.Event()
    wait = SourceWait("rtsp://cam-7/stream1", Backoff(initial_s=30.0, max_s=30.0), stop)
    threading.Timer(0.1, stop.set).start()
    started = time.monotonic()
    with caplog.at_level("WARNING"):
        assert wait.wait("Connection refused") is False
    assert time.monotonic() - started < 5
    assert "waiting for rtsp://cam-7/stream1" in caplog.text and "Connection refused" in caplog.text


def test_a_source_away_longer_than_give_up_after_raises():
    wait = SourceWait("rtmp://relay/live/cam", Backoff(initial_s=0.05, max_s=0.05, give_up_after_s=0.2))
    with pytest.raises(SourceGone, match="still unavailable"):
        for _ in range(100):
            wait.wait("stream not found")
    assert wait.attempt > 1
