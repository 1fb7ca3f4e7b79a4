"""Keyframe-aligned parallel decode (methods.md section 8): segments decoded in worker processes, in order.

Segments start at keyframes and GOPs are closed, so every segment decodes on its
own: cutting a file into segments IS cutting it at keyframes, and W worker
processes each decoding whole segments decode W GOPs at once with no seeking and
no overlap. Each worker holds its own `SegmentDecoder` (single-threaded, as a
decoder actor is), so a segment decodes to exactly the FrameBatch the live
decoder produces.

Results come back in submission order with a bounded look-ahead: the consumer
(the encoder) works on early segments while workers decode later ones, and at
most ``lookahead`` decoded segments wait in memory.

Workers are started with the 'forkserver' method: a forked copy of a parent that
holds torch's thread pools, a Redis connection or a loaded model is unsafe (and
copies that state), while 'spawn' would start each worker from a cold interpreter
every time; forkserver forks workers from a clean server process started once.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor

from operators.config import DecodeConfig
from operators.decode import SegmentDecoder
from operators.frames import FrameBatch, SegmentInfo, StageError

# Set once per worker process by _start_worker; the pool never runs anything else there.
_worker_decoder: SegmentDecoder | None = None


def _start_worker(config: DecodeConfig) -> None:
    global _worker_decoder
    _worker_decoder = SegmentDecoder(config, frame_px=config.frame_px)


def _decode(info: SegmentInfo, payload: bytes) -> FrameBatch:
    assert _worker_decoder is not None, "the pool's initializer did not run"
    return _worker_decoder.decode(info, payload)


class ParallelDecoder:
    """Decodes segments in ``workers`` processes and yields them in the order given.

    lookahead: segments submitted ahead of the one the consumer is waiting for. The default
        (2 x workers) keeps every worker busy while the consumer holds one result; more only
        costs memory (one FrameBatch each, ~0.7 MB per 640 px frame).
    """

    def __init__(self, config: DecodeConfig, *, workers: int, lookahead: int | None = None):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.lookahead = 2 * workers if lookahead is None else lookahead
        if self.lookahead < workers:
            raise ValueError(f"lookahead {self.lookahead} below workers {workers} would leave workers idle")
        self._pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("forkserver"),
                                         initializer=_start_worker, initargs=(config,))

    def __enter__(self) -> ParallelDecoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers; segments submitted but not yet taken are dropped."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def decode(self, segments: Iterable[tuple[SegmentInfo, bytes]]) -> Iterator[tuple[SegmentInfo, FrameBatch | StageError]]:
        """(info, frames) per segment, in the order of ``segments``; bad input comes back as its StageError
        (tagged stage "decode") in place of the frames, so the caller can dead-letter it and go on.

        ``segments`` is pulled lazily, only as far as the look-ahead reaches.
        """
        source = iter(segments)
        pending: deque[tuple[SegmentInfo, Future[FrameBatch]]] = deque()

        def fill() -> None:
            while len(pending) < self.lookahead:
                item = next(source, None)
                if item is None:
                    return
                info, payload = item
                pending.append((info, self._pool.submit(_decode, info, payload)))

        fill()
        while pending:
            info, future = pending.popleft()
            result: FrameBatch | StageError
            try:
                result = future.result()
            except StageError as exc:
                exc.stage = exc.stage or "decode"
                result = exc
            fill()  # before handing the frames on: workers decode while the consumer encodes
            yield info, result
