"""Segment archive: a copy of each segment's payload kept longer than the segments topic keeps it.

Any fsspec URL works: ``file:///var/lib/livelens/archive`` (or a plain path) here, ``s3://bucket/livelens``,
``gs://...``, ``abfs://...`` in production once the matching fsspec backend (s3fs, gcsfs, adlfs) is installed.
Layout: ``<url>/<tenant>/<stream>/<segment id>.seg`` (``session-seq``), one payload per file, exactly the bytes
the publisher sent in the container its ledger entry names (MPEG-TS or Matroska), so a clip cut from the archive equals one cut from Kafka.

Writes are whole-file: on a local filesystem through a temporary name and a rename, so a reader never sees
half a segment; object stores make a PUT visible only once complete. What the archive holds and until when is
recorded beside each segment's Kafka location (`pipelines.clips.ClipLedger`); this module only moves bytes.
"""

from __future__ import annotations

import uuid

import fsspec
from fsspec.implementations.local import LocalFileSystem

from memory_store.keys import check_id
from pipelines.config import ArchiveConfig


class SegmentArchive:
    def __init__(self, config: ArchiveConfig):
        if not config.url:
            raise ValueError("archive.url is not set")
        self.fs, self.root = fsspec.core.url_to_fs(config.url, **config.storage_options)
        self.root = self.root.rstrip("/")
        self._local = isinstance(self.fs, LocalFileSystem)
        if self._local:
            self.fs.makedirs(self.root, exist_ok=True)

    def path(self, tenant_id: str, stream_id: str, segment_id: str) -> str:
        return (f"{self.root}/{check_id('tenant', tenant_id)}/{check_id('stream', stream_id)}/"
                f"{check_id('segment', segment_id)}.seg")

    def put(self, tenant_id: str, stream_id: str, segment_id: str, payload: bytes) -> str:
        """Store one segment's payload (again: same bytes, same file). Returns its path."""
        path = self.path(tenant_id, stream_id, segment_id)
        if not self._local:
            self.fs.pipe_file(path, payload)
            return path
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        partial = f"{path}.{uuid.uuid4().hex}.partial"
        self.fs.pipe_file(partial, payload)
        self.fs.mv(partial, path)
        return path

    def get(self, tenant_id: str, stream_id: str, segment_id: str) -> bytes | None:
        """The segment's payload, None when the archive does not hold it."""
        try:
            return self.fs.cat_file(self.path(tenant_id, stream_id, segment_id))
        except FileNotFoundError:
            return None

    def delete(self, tenant_id: str, stream_id: str, segment_id: str) -> None:
        try:
            self.fs.rm_file(self.path(tenant_id, stream_id, segment_id))
        except FileNotFoundError:
            pass  # already gone: retention ran twice, or it was never archived

    def delete_stream(self, tenant_id: str, stream_id: str) -> int:
        """Delete every archived segment of a stream (a purge), named in the ledger or not. Returns files deleted."""
        folder = f"{self.root}/{check_id('tenant', tenant_id)}/{check_id('stream', stream_id)}"
        try:
            files = self.fs.find(folder)
        except FileNotFoundError:
            return 0
        if files:
            self.fs.rm(files)
        if self.fs.exists(folder):
            self.fs.rm(folder, recursive=True)
        return len(files)

    def bytes_held(self, tenant_id: str, stream_id: str) -> int:
        """Bytes archived for one stream (for the benchmark and operators' sizing)."""
        folder = f"{self.root}/{check_id('tenant', tenant_id)}/{check_id('stream', stream_id)}"
        try:
            return int(self.fs.du(folder, total=True))
        except FileNotFoundError:
            return 0
