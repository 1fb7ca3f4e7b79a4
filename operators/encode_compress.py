"""Encode and compress in one pass on the encoder's device: frames in, what memory stores out.

``VisionEncoder.encode`` followed by ``TokenDropCompressor.compress`` copies every token of every frame to the
host and concatenates them there before the compressor throws most of them away; on an H100 that ran the
encode path at 28-31% of its tower, 4% with pixel-mode drop and pruning in numpy (issue 18, BENCHMARKS.md).
``EncodeCompressor`` keeps the tokens on the device (81-92% of the tower on the same batch):

    host frames --(pinned staging, copy stream)--> device uint8 --> resize + normalise --> tower
        --> differential drop + pruning (DeviceTokenCompressor, state on the device)
        --(output stream: kept tokens only, masks, embeddings)--> pinned host arrays --> CompressedBatch

Chunks of at most ``encode.batch_frames`` frames are all queued before the host waits for the first one's
masks: chunk i+1's frames are staged and copied while the GPU runs chunk i. ``submit`` / ``collect`` carry
the same overlap across calls (an encoder fed continuously): the next call's frames are staged while the
GPU finishes this one's. Host arrays handed out are views of pinned buffers from torch's caching
host allocator, which reuses a buffer once the arrays that view it are gone.

On the CPU the same code runs synchronously (no pinned memory, no streams), and its results equal
``encode`` + ``compress`` (tests/operators/test_encode_compress.py).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from operators.device_compress import DeviceTokenCompressor, StreamRows, cell_lattice, pixel_cells_on_device
from operators.encode import VisionEncoder
from operators.frames import CompressedBatch, FrameBatch


@dataclass
class _Piece:
    """Frames [start, stop) of input batch ``batch``: one chunk holds several, a long segment spans chunks."""

    batch: int
    start: int
    stop: int


@dataclass
class _Queued:
    """A chunk whose device work is queued: its outputs, and the event after which its masks are final."""

    pieces: list[_Piece]
    tokens: torch.Tensor  # [n, T, D] float16 on the device
    embedding: torch.Tensor  # [n, E] float32 on the device
    kept: torch.Tensor  # [n, T] bool on the device
    drop_ratio: torch.Tensor  # [n]
    counts: torch.Tensor  # [n] kept tokens per frame, on the host once ``marked`` has passed
    marked: torch.cuda.Event | None


@dataclass
class Submitted:
    """Batches whose chunks are queued on the device (``EncodeCompressor.submit``), to be collected in order."""

    batches: list[FrameBatch]
    chunks: list[_Queued]


@dataclass
class _Part:
    """Host results of one piece."""

    kept: np.ndarray
    tokens: np.ndarray
    embedding: np.ndarray
    drop_ratio: np.ndarray


class EncodeCompressor:
    """``VisionEncoder`` + ``DeviceTokenCompressor`` over frame batches of many streams, returning compressed batches.

    The compressor must live on the encoder's device. An encoder built with the ViT token cache is refused:
    this path computes every frame in full, and ignoring the cache silently would misreport what runs.
    """

    def __init__(self, encoder: VisionEncoder, compressor: DeviceTokenCompressor):
        device = torch.device(encoder.config.device)
        if compressor.device.type != device.type:
            raise ValueError(f"compressor on {compressor.device}, encoder on {device}: they must share the device")
        if encoder.uses_token_cache:
            raise ValueError("EncodeCompressor computes frames in full: build its VisionEncoder without token_cache")
        self.encoder = encoder
        self.compressor = compressor
        self._device = device
        cuda = self._device.type == "cuda"
        self._copy_stream = torch.cuda.Stream(self._device) if cuda else None
        self._out_stream = torch.cuda.Stream(self._device) if cuda else None

    @torch.inference_mode()
    def process(self, batches: Sequence[FrameBatch]) -> list[CompressedBatch]:
        """One ``CompressedBatch`` per input batch, in order. Batches of one stream must come in stream order."""
        return self.collect(self.submit(batches))

    @torch.inference_mode()
    def submit(self, batches: Sequence[FrameBatch]) -> Submitted:
        """Stage and queue all device work for ``batches``; returns without waiting for the device. Submitting the
        next call's batches before collecting this one's keeps the GPU busy while the host stages and splits:
        the steady state of an encoder fed continuously. Submissions must be collected in order."""
        return Submitted(list(batches), [self._enqueue(batches, pieces) for pieces in self._chunks(batches)])

    @torch.inference_mode()
    def collect(self, submitted: Submitted) -> list[CompressedBatch]:
        """Wait for a submission's results and return one ``CompressedBatch`` per input batch, in order."""
        parts: list[list[_Part]] = [[] for _ in submitted.batches]
        for queued in submitted.chunks:
            self._collect(queued, parts)
        return [self._assemble(b, p) for b, p in zip(submitted.batches, parts)]

    def _chunks(self, batches: Sequence[FrameBatch]) -> Iterator[list[_Piece]]:
        limit = self.encoder.config.batch_frames
        pieces: list[_Piece] = []
        filled = 0
        for i, batch in enumerate(batches):
            start = 0
            while start < len(batch):
                take = min(limit - filled, len(batch) - start)
                pieces.append(_Piece(i, start, start + take))
                filled += take
                start += take
                if filled == limit:
                    yield pieces
                    pieces, filled = [], 0
        if pieces:
            yield pieces

    def _enqueue(self, batches: Sequence[FrameBatch], pieces: list[_Piece]) -> _Queued:
        """Queue a chunk's copies, forward pass and masks; returns without waiting for the device."""
        groups = self._same_size_runs(batches, pieces)
        frames = [self._to_device([batches[p.batch].images[p.start : p.stop] for p in group]) for group in groups]
        tokens, embedding = self.encoder.features_on_device(frames)
        tokens = tokens.to(torch.float16)  # what memory stores, and what the host path compares
        cells = None
        if self.compressor.drop.mode == "pixel":
            cells = torch.cat([self._pixel_cells(f) for f in frames])
        rows = [StreamRows((batches[p.batch].segment.tenant_id, batches[p.batch].segment.stream_id),
                           batches[p.batch].pts_s[p.start : p.stop]) for p in pieces]
        kept, drop_ratio = self.compressor.mark_chunk(rows, tokens, self.encoder.grid, cells)
        counts = kept.sum(dim=1)
        marked = None
        if self._out_stream is not None:
            counts = counts.to("cpu", non_blocking=True)  # into pinned memory; final once ``marked`` has passed
            marked = torch.cuda.Event()
            marked.record()
        return _Queued(pieces, tokens, embedding, kept, drop_ratio, counts, marked)

    def _pixel_cells(self, frames: torch.Tensor) -> torch.Tensor:
        passes = self.encoder.frame_passes
        if passes is None:
            return pixel_cells_on_device(frames, self.encoder.grid)
        return passes.pixel_cells(frames, cell_lattice(frames, self.encoder.grid))

    @staticmethod
    def _same_size_runs(batches: Sequence[FrameBatch], pieces: list[_Piece]) -> list[list[_Piece]]:
        """Consecutive pieces whose frames share a size: each run is staged, copied and resized as one tensor."""
        runs: list[list[_Piece]] = []
        for piece in pieces:
            shape = batches[piece.batch].images.shape[1:]
            if runs and batches[runs[-1][-1].batch].images.shape[1:] == shape:
                runs[-1].append(piece)
            else:
                runs.append([piece])
        return runs

    def _to_device(self, arrays: list[np.ndarray]) -> torch.Tensor:
        """Frames of one size, stacked on the device. On a GPU: staged through a pinned buffer, copied on the
        copy stream; the compute stream waits for the copy, the host does not."""
        n = sum(len(a) for a in arrays)
        if self._copy_stream is None:
            return torch.from_numpy(np.concatenate(arrays) if len(arrays) > 1 else _writable(arrays[0]))
        pinned = torch.empty((n, *arrays[0].shape[1:]), dtype=torch.uint8, pin_memory=True)
        at = 0
        with warnings.catch_warnings():
            # Frames from Ray's object store are read-only; they are only read here, into the staging buffer.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            for images in arrays:
                pinned[at : at + len(images)].copy_(torch.from_numpy(images))  # torch's copy uses every core
                at += len(images)
        with torch.cuda.stream(self._copy_stream):
            frames = pinned.to(self._device, non_blocking=True)
        current = torch.cuda.current_stream(self._device)
        current.wait_stream(self._copy_stream)
        frames.record_stream(current)  # allocated on the copy stream, used on the compute stream
        return frames

    def _collect(self, queued: _Queued, parts: list[list[_Part]]) -> None:
        """Wait for a chunk's masks, bring its kept tokens, masks and embeddings to the host, split by piece."""
        if queued.marked is not None:
            queued.marked.synchronize()  # the chunk's masks only: the next chunk's forward pass keeps running
        counts = queued.counts.numpy()
        total = int(counts.sum())
        with self._on_output_stream(queued):
            # Positions of kept tokens in (frame, position) order: a stable sort puts kept first, no host sync.
            flat = queued.kept.reshape(-1)
            order = torch.argsort((~flat).to(torch.uint8), stable=True)[:total]
            d = queued.tokens.shape[-1]
            kept_tokens = queued.tokens.reshape(-1, d).index_select(0, order)
            host = [self._to_host(t) for t in (kept_tokens, queued.kept, queued.embedding, queued.drop_ratio)]
        if self._out_stream is not None:
            self._out_stream.synchronize()
        tokens, kept, embedding, drop_ratio = (t.numpy() for t in host)
        frame_at, token_at = 0, 0
        for piece in queued.pieces:
            n = piece.stop - piece.start
            k = int(counts[frame_at : frame_at + n].sum())
            parts[piece.batch].append(_Part(kept[frame_at : frame_at + n], tokens[token_at : token_at + k],
                                            embedding[frame_at : frame_at + n], drop_ratio[frame_at : frame_at + n]))
            frame_at += n
            token_at += k

    @contextlib.contextmanager
    def _on_output_stream(self, queued: _Queued) -> Iterator[None]:
        if self._out_stream is None:
            yield
            return
        self._out_stream.wait_event(queued.marked)
        for t in (queued.tokens, queued.kept, queued.embedding, queued.drop_ratio):
            t.record_stream(self._out_stream)  # made on the compute stream, read on this one
        with torch.cuda.stream(self._out_stream):
            yield

    def _to_host(self, t: torch.Tensor) -> torch.Tensor:
        if self._out_stream is None:
            return t
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t, non_blocking=True)
        return host

    def _assemble(self, batch: FrameBatch, parts: list[_Part]) -> CompressedBatch:
        def joined(name: str) -> np.ndarray:
            arrays = [getattr(p, name) for p in parts]
            return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

        if not parts:  # an empty batch: nothing went through the tower
            t, d = self.encoder.tokens_per_frame, self.encoder.token_dim
            return CompressedBatch(batch.segment, batch.pts_s, np.zeros((0, self.encoder.embedding_dim), np.float32),
                                   np.zeros((0, t), bool), np.zeros((0, d), np.float16), np.zeros(0),
                                   self.encoder.grid, list(batch.thumbnails))
        return CompressedBatch(segment=batch.segment, pts_s=batch.pts_s, embedding=joined("embedding"),
                               kept=joined("kept"), tokens=joined("tokens"), drop_ratio=joined("drop_ratio"),
                               grid=self.encoder.grid, thumbnails=list(batch.thumbnails))


def _writable(images: np.ndarray) -> np.ndarray:
    """torch.from_numpy wants an array it may write; arrays from Ray's object store are read-only views."""
    return images if images.flags.writeable else images.copy()
