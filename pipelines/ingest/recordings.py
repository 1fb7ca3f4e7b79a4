"""Recordings to backfill: which files a command line names, what stream each is, when it started, and what
identifies its content (a backfill manifest is valid only for the same content)."""

from __future__ import annotations

import glob
import logging
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import av
import httpx

from pipelines.segmenter import NETWORK_TIMEOUT_S, VIDEO_EXTENSIONS

log = logging.getLogger(__name__)


class BackfillError(Exception):
    """A file cannot be backfilled as asked: no start time, not a file, or a manifest from another file or config."""


def file_start_time(source: Path | str) -> datetime | None:
    """The file's ``creation_time`` metadata (container, else video track) as an aware datetime; None without one.

    MP4/MOV store it in UTC by definition, so a value without an offset is read as UTC.
    """
    with open_source(source) as container:
        video = container.streams.video
        value = container.metadata.get("creation_time") or (video[0].metadata.get("creation_time") if video else None)
    if not value:
        return None
    try:
        start = datetime.fromisoformat(value)
    except ValueError as exc:
        raise BackfillError(f"{source}: creation_time {value!r} is not an ISO 8601 time; give the start "
                            "explicitly") from exc
    return start if start.tzinfo is not None else start.replace(tzinfo=UTC)


def assumed_start_time(source: Path | str, duration_s: float | None) -> datetime:
    """The start of a recording with no ``creation_time``: its modification time minus its duration (a recorder
    writes a file last when the recording ends). A URL has no modification time: it ends now."""
    end = datetime.now(UTC) if is_url(source) else datetime.fromtimestamp(Path(source).stat().st_mtime, UTC)
    start = datetime.fromtimestamp(end.timestamp() - (duration_s or 0.0), UTC)
    log.warning("%s has no creation_time metadata: assuming it starts at %s (%s minus its %.1f s); give --start "
                "to set it", source, start.isoformat(timespec="seconds"),
                "now" if is_url(source) else "its modification time", duration_s or 0.0)
    return start


def consecutive_starts(sources: Sequence[Path | str], first: datetime) -> list[datetime]:
    """One start for several files (in order): the first starts then, each later one where the one before ends."""
    starts, at = [], first.timestamp()
    for source in sources:
        starts.append(datetime.fromtimestamp(at, first.tzinfo))
        duration = media_duration_s(source)
        if duration is None:
            if len(starts) < len(sources):
                raise BackfillError(f"{source}: its container does not say how long it is, so the next file's "
                                    "start is unknown; backfill the files one at a time, each with its --start")
            break
        at += duration
    return starts


def open_source(source: Path | str) -> av.container.InputContainer:
    try:
        return av.open(str(source), timeout=NETWORK_TIMEOUT_S)
    except av.FFmpegError as exc:  # missing, unreadable, an HTTP error: before any work, with the source named
        raise BackfillError(f"{source}: cannot open: {exc}") from exc


def media_duration_s(source: Path | str) -> float | None:
    """The file's duration for the progress bar; None when the container does not say."""
    with open_source(source) as container:
        return container.duration / av.time_base if container.duration else None


def expand_sources(sources: Sequence[str]) -> list[Path | str]:
    """The files of the given files, directories (their video files) and globs, each once, in name order;
    then the http(s) URLs as given."""
    urls = [s for s in sources if is_url(s)]
    paths = {Path(f) for s in sources if not is_url(s) for f in (glob.glob(s) or [s])}
    files = {f for p in paths for f in ([c for c in p.iterdir() if c.is_file() and c.suffix.lower() in VIDEO_EXTENSIONS]
                                        if p.is_dir() else [p])}
    return [*sorted(files), *urls]


def stream_id_for(source: Path | str, pattern: str | None = None) -> str:
    """A source's stream id from its file name (a URL's last path component).

    pattern: a regex searched in the name; its group ``stream`` (else its first group, else the whole
        match) is the id, e.g. ``^(cam-\\d+)_`` makes ``cam-07_2026-03-01.mp4`` stream ``cam-07``. None:
        the name without its extension. Characters a stream id cannot hold become '-'.
    """
    name = source_name(source)
    if pattern is None:
        found = PurePosixPath(name).stem
    else:
        match = re.search(pattern, name)
        if match is None:
            raise BackfillError(f"{source}: stream pattern {pattern!r} does not match {name!r}")
        groups = match.groupdict()
        found = groups["stream"] if "stream" in groups else match.group(1) if match.re.groups else match.group(0)
        if not found:
            raise BackfillError(f"{source}: stream pattern {pattern!r} matched {name!r} but captured nothing")
    return re.sub(r"[^A-Za-z0-9_.:-]", "-", found)[:128]


def is_url(source: Path | str) -> bool:
    return isinstance(source, str) and urlparse(source).scheme.lower() in {"http", "https"}


def source_name(source: Path | str) -> str:
    """File name, or the last path component of a URL: for progress bars and stream ids."""
    return PurePosixPath(urlparse(source).path).name or source if is_url(source) else Path(source).name


def source_fingerprint(source: Path | str) -> str:
    """What identifies the content a manifest describes: a file's path, size and mtime; a URL and the
    validators its server sends (ETag, Last-Modified, Content-Length)."""
    if not is_url(source):
        stat = Path(source).stat()
        return f"{Path(source).resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        head = httpx.head(source, follow_redirects=True, timeout=NETWORK_TIMEOUT_S[0])
        head.raise_for_status()
    except httpx.HTTPError as exc:
        raise BackfillError(f"{source}: cannot reach it: {exc}") from exc
    validators = [head.headers.get(h, "") for h in ("etag", "last-modified", "content-length")]
    if not any(validators):
        log.warning("%s: the server sends no ETag, Last-Modified or Content-Length: a resume cannot tell "
                    "whether the content changed since the manifest was written", source)
    return "|".join([source, *validators])
