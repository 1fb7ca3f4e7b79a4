"""Backfill sources beyond local files, stream ids from names, and resume with frame skipping on.

http(s): a local http.server (with Range support, as real servers have: an MP4 whose index
sits at its end can only be read by seeking) serves the sample broadcast from a thread.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import redis

from pipelines.cli.sample_video import write_sample_video
from pipelines.ingest.backfill import Backfill, BackfillJob
from pipelines.ingest.recordings import BackfillError, expand_sources, stream_id_for
from tests.test_backfill import (
    REPO,
    START,
    CrashingStore,
    _Crash,
    _remux_with_creation_time,
    assert_same_memory,
    make_config,
    memory,
    store_for,
)


class _RangeHandler(SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler plus single byte ranges (``Range: bytes=a-b``), which FFmpeg uses to seek."""

    def send_head(self):
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match is None:
            return super().send_head()
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(HTTPStatus.NOT_FOUND)
            return None
        size = path.stat().st_size
        first = int(match.group(1))
        last = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
        if first >= size:
            self.send_error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            return None
        f = path.open("rb")
        f.seek(first)
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.send_header("Content-Length", str(last - first + 1))
        self.send_header("Last-Modified", self.date_time_string(int(path.stat().st_mtime)))
        self.end_headers()
        self._remaining = last - first + 1
        return f

    def copyfile(self, source, outputfile) -> None:
        remaining = getattr(self, "_remaining", None)
        if remaining is None:
            return super().copyfile(source, outputfile)
        while remaining > 0:
            chunk = source.read(min(64 * 1024, remaining))
            if not chunk:
                break
            outputfile.write(chunk)
            remaining -= len(chunk)
        return None

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(base URL, the folder it serves), with the sample broadcast as cam-07_2026-03-01.mp4 and a copy
    stamped with creation_time."""
    root = tmp_path_factory.mktemp("served")
    write_sample_video(root / "cam-07_2026-03-01.mp4", duration_s=20.0)
    _remux_with_creation_time(root / "cam-07_2026-03-01.mp4", root / "stamped.mp4", START.isoformat())
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_RangeHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", root
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_a_url_backfills_what_its_file_does_and_resumes(tmp_path, redis_server, tiny_models, served):
    base, root = served
    config = make_config(tmp_path, tiny_models)
    url = f"{base}/cam-07_2026-03-01.mp4"
    over_http = store_for(redis_server, 0, config)
    backfill = Backfill(config, over_http, workers=2, progress=False)
    summary = backfill.run([BackfillJob(url, stream_id_for(url, r"^(?P<stream>cam-\d+)_"), wallclock_start=START)])
    assert (summary.segments, summary.frames, summary.dead_letters) == (10, 20, {})
    from_file = store_for(redis_server, 1, config)
    Backfill(config, from_file, workers=2, progress=False).run(
        [BackfillJob(root / "cam-07_2026-03-01.mp4", "cam-07", wallclock_start=START)])
    assert_same_memory(memory(over_http), memory(from_file))
    # The manifest knows the URL (and its server's validators): a rerun redoes nothing.
    again = backfill.run([BackfillJob(url, "cam-07", wallclock_start=START)])
    assert (again.segments, again.segments_skipped) == (0, 10)


def test_a_url_takes_its_start_from_metadata(tmp_path, redis_server, tiny_models, served):
    base, _ = served
    config = make_config(tmp_path, tiny_models)
    store = store_for(redis_server, 0, config)
    summary = Backfill(config, store, workers=1, progress=False).run([BackfillJob(f"{base}/stamped.mp4", "cam")])
    assert summary.segments == 10
    assert min(v[3] for v in memory(store).values()) == pytest.approx(START.timestamp())
    with pytest.raises(BackfillError, match="missing.mp4: cannot open: .*404"):
        Backfill(config, store, workers=1, progress=False).run(
            [BackfillJob(f"{base}/missing.mp4", "cam", wallclock_start=START)])


@pytest.mark.parametrize(("name", "pattern", "expected"), [
    ("cam-07_2026-03-01.mp4", None, "cam-07_2026-03-01"),
    ("cam-07_2026-03-01.mp4", r"^(?P<stream>cam-\d+)_", "cam-07"),
    ("cam-07_2026-03-01.mp4", r"^([a-z]+)", "cam"),  # the first group when none is named
    ("lobby east.mov", r"^\w+ \w+", "lobby-east"),  # the whole match; a space cannot be in an id
    ("http://host/a/news%20at%209.ts", None, "news-20at-209"),
    ("cam-07.mp4", r"^studio", BackfillError),
])
def test_stream_ids_come_from_names(name, pattern, expected):
    source = name if name.startswith("http") else Path("/data") / name
    if expected is BackfillError:
        with pytest.raises(BackfillError, match="does not match"):
            stream_id_for(source, pattern)
    else:
        assert stream_id_for(source, pattern) == expected


def test_sources_expand_to_files_and_urls(tmp_path):
    for name in ("b.mp4", "a.mp4", "c.ts", "notes.json"):
        (tmp_path / "dir" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "dir" / name).write_bytes(b"")
    shutil.copy(tmp_path / "dir" / "a.mp4", tmp_path / "single.mp4")
    got = expand_sources([str(tmp_path / "dir"), str(tmp_path / "single.mp4"), "https://h/x.mp4",
                          str(tmp_path / "dir" / "*.mp4")])
    # Video files once each, in name order (a directory's and a glob's overlap), then the URLs.
    assert got == [tmp_path / "dir" / "a.mp4", tmp_path / "dir" / "b.mp4", tmp_path / "dir" / "c.ts",
                   tmp_path / "single.mp4", "https://h/x.mp4"]


def test_resume_with_frame_skipping_equals_an_uninterrupted_run(tmp_path, redis_server, tiny_models, served):
    _, root = served
    config = make_config(tmp_path, tiny_models).model_copy(
        update={"cache": make_config(tmp_path, tiny_models).cache.model_copy(update={"skip_frames": True})})
    job = BackfillJob(root / "cam-07_2026-03-01.mp4", "cam", wallclock_start=START)
    uninterrupted = store_for(redis_server, 1, config)
    Backfill(config, uninterrupted, workers=1, progress=False).run([job])
    stored = memory(uninterrupted)
    by_pts = sorted(stored.items(), key=lambda kv: kv[1][3])
    skipped = {key for (_, a), (key, b) in itertools.pairwise(by_pts) if np.array_equal(a[1], b[1])}
    # Segment 7 starts with a skipped frame: resumed there, a skipper restarted empty would encode it.
    assert "default/cam/7/14000" in skipped

    # Groups of 2 segments: crashed writing segment 7 (group [6,7]), the manifest's last checkpoint is the end
    # of group [4,5], where the skipper's state was the state after segment 5; the resume starts at 6.
    crashing = CrashingStore(redis.Redis.from_url(redis_server.address), config.memory, survive=7)
    with pytest.raises(_Crash):
        Backfill(config, crashing, workers=1, progress=False).run([job])
    resumed_store = store_for(redis_server, 0, config)
    resumed = Backfill(config, resumed_store, workers=1, progress=False).run([job])
    assert (resumed.segments_skipped, resumed.segments) == (6, 4)
    assert_same_memory(memory(resumed_store), stored)


def test_the_backfill_command_takes_urls_and_a_stream_pattern(tmp_path, redis_server, tiny_models, served):
    base, _ = served
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {
        "LIVELENS_DATA_DIR": str(tmp_path / "data"), "LIVELENS_REDIS_URL": redis_server.address,
        "LIVELENS_ENCODE__MODEL": str(tiny_models["clip"]), "LIVELENS_OCR__ENABLED": "false"}
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "backfill", f"{base}/cam-07_2026-03-01.mp4",
                           "--stream-pattern", r"^(?P<stream>cam-\d+)_", "--start", START.isoformat(),
                           "--workers", "1"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "segments=10" in done.stdout
    store = store_for(redis_server, 0, make_config(tmp_path, tiny_models))
    assert [(s.stream_id, s.frames) for s in store.streams("default")] == [("cam-07", 20)]
