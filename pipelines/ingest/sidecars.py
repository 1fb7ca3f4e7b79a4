"""Sidecar subtitle files of a recording: ``talk.mp4`` with ``talk.vtt``, ``talk.srt``, ``talk.ass`` or a
language-tagged ``talk.en.vtt`` beside it. Backfill reads their cues as subtitle lines of the recording's
segments, as if the file had carried them as a track (`operators.side_tracks.sidecar_lines`).

Cue times are the recording's own, and a backfilled file's segments start at stream time 0, so a cue belongs
to the segment whose span holds its start (cues starting after the video's end have no segment and are left).
A recording that carries a text subtitle track of its own is read from that track alone: a sidecar beside it
is usually the same cues (the sample broadcast writes both), and reading both would store every cue twice.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlparse

import av

from operators.frames import SegmentInfo
from operators.side_tracks import sidecar_lines
from operators.transcript import TranscriptLine
from pipelines.segment_tracks import TEXT_SUBTITLE_CODECS

log = logging.getLogger(__name__)

SIDECAR_SUFFIXES = (".vtt", ".srt", ".ass", ".ssa")


def _has_text_subtitles(recording: Path) -> bool:
    try:
        with av.open(str(recording)) as container:
            return any(s.codec_context is not None and s.codec_context.name in TEXT_SUBTITLE_CODECS
                       for s in container.streams.subtitles)
    except av.FFmpegError:
        return False  # the segmenter says what is wrong with it


def sidecar_files(source: Path | str) -> list[Path]:
    """The subtitle files beside a local recording (none for a URL), in name order."""
    if len(urlparse(str(source)).scheme) > 1:  # a URL (one letter is a Windows drive)
        return []
    source = Path(source)
    stem = source.stem
    return sorted(p for p in source.parent.iterdir()
                  if p.is_file() and p.suffix.lower() in SIDECAR_SUFFIXES
                  and (p.stem == stem or (p.stem.startswith(stem + ".") and "." not in p.stem[len(stem) + 1:])))


class Sidecars:
    """The sidecar cues of the recordings being backfilled, handed out segment by segment."""

    def __init__(self) -> None:
        self._lines: dict[tuple[str, str], list[TranscriptLine]] = {}

    def load(self, tenant_id: str, stream_id: str, source: Path | str) -> None:
        lines: list[TranscriptLine] = []
        files = sidecar_files(source)
        if files and _has_text_subtitles(Path(source)):
            log.info("%s carries a subtitle track: sidecar %s not read", source, ", ".join(p.name for p in files))
            files = []
        for path in files:
            try:
                lines += sidecar_lines(path)
            except ValueError as exc:  # a broken sidecar costs its cues, not the recording
                log.warning("sidecar subtitles skipped: %s", exc)
                continue
            log.info("%s: %d cues from sidecar %s", source, len(lines), path.name)
        self._lines[(tenant_id, stream_id)] = sorted(lines, key=lambda line: line.start_s)

    def lines_of(self, info: SegmentInfo) -> list[TranscriptLine]:
        """The cues starting inside the segment's span."""
        end = info.media_start_s + info.duration_s
        return [line for line in self._lines.get((info.tenant_id, info.stream_id), ())
                if info.media_start_s <= line.start_s < end]

    def forget(self, tenant_id: str, stream_id: str) -> None:
        self._lines.pop((tenant_id, stream_id), None)
