"""Waiting for a live source to come (back): capped exponential backoff, and saying what is waited for.

A camera reboots, an encoder is restarted, a playlist is not up yet: none of that is bad input, so a
publisher of a live URL waits and tries again instead of exiting. The delays grow from
``initial_s`` by ``multiplier`` up to ``max_s`` (with up to a quarter taken off at random, so the
publishers of many cameras behind one restarted server do not all knock at once), and each wait is
logged with the reason, the attempt and how long the source has been away.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """How a publisher retries a live source. ``give_up_after_s``: stop after the source has been away
    this long (None: never, the default for a long-lived publisher)."""

    initial_s: float = 0.5
    max_s: float = 10.0
    multiplier: float = 2.0
    give_up_after_s: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s or self.multiplier < 1:
            raise ValueError(f"backoff needs 0 < initial_s <= max_s and multiplier >= 1, got {self}")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before try number ``attempt`` (from 1), jittered down by up to a quarter."""
        capped = min(self.max_s, self.initial_s * self.multiplier ** (attempt - 1))
        return capped * (1.0 - 0.25 * random.random())


class SourceGone(Exception):
    """The source stayed away longer than the backoff's ``give_up_after_s``."""


class SourceWait:
    """The waits of one outage: `wait` sleeps the next delay, or says the caller should stop.

    ``stop`` (optional) ends a wait early: `wait` returns False then.
    """

    def __init__(self, source: str, backoff: Backoff, stop: threading.Event | None = None):
        self.source, self.backoff, self._stop = source, backoff, stop
        self.attempt = 0
        self.since = time.monotonic()

    @property
    def away_s(self) -> float:
        return time.monotonic() - self.since

    def wait(self, reason: str) -> bool:
        """Log what is waited for and sleep; False when stopped. Raises SourceGone past the give-up time."""
        self.attempt += 1
        away = self.away_s
        limit = self.backoff.give_up_after_s
        if limit is not None and away >= limit:
            raise SourceGone(f"{self.source}: still unavailable after {away:.0f} s ({reason})")
        delay = self.backoff.delay(self.attempt)
        log.warning("waiting for %s (away %.1f s, attempt %d, next try in %.1f s): %s",
                    self.source, away, self.attempt, delay, reason)
        if self._stop is None:
            time.sleep(delay)
            return True
        return not self._stop.wait(delay)
