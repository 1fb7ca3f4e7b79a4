"""The operator chain between decode and memory, built in one place for live ingest, backfill and replay.

Frames become what memory stores in one of two ways, chosen by `encode.fused` (`LivelensConfig.fused_encode`):
- fused (the default on CUDA): `FusedEncodeCompress`, encode and compress in one pass on the encoder's device
  (operators/encode_compress.py), then the boundary detector; only kept tokens leave the device.
- separate: `EncodeStep` (with frame skip) then `CompressStep`; every token comes back from the encoder.
On the CPU both give the same results (tests/test_chain.py), and their compressors' snapshots have one format,
so a backfill manifest or a stream's state moves between them.

The live actors each hold one step of it, sharded by stream (fused: the encode actor holds
`FusedEncodeCompress`; separate: the encode actor the `EncodeStep`, the compress actor the `CompressStep`);
backfill and replay hold the whole `OperatorChain` in one process. Either way the steps are built here from
the config and run the same way, so backfill stores what live ingest would, and their per-stream state goes
through one protocol (`operators.state.Stateful`): the backfill manifest stores whatever each stateful step's
snapshot returns, under the step's name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from operators.boundaries import BoundaryDetector
from operators.compress import TokenDropCompressor
from operators.device_compress import DeviceTokenCompressor
from operators.encode import VisionEncoder
from operators.encode_compress import EncodeCompressor
from operators.frame_skip import FrameSkipper, encode_skipping
from operators.frames import CompressedBatch, FeatureBatch, FrameBatch, StageError, tag_stage
from operators.state import Stateful, restore_steps, snapshot_steps
from operators.transcribe import Recognizer, Transcriber
from pipelines.config import LivelensConfig
from pipelines.models import vision_encoder

if TYPE_CHECKING:  # the OCR models load only where text is read: an encoder process does not need them
    from operators.ocr import ScreenTextReader


@dataclass
class EncodeStep:
    """The vision encoder and, with `cache.skip_frames`, the frame skipper in front of it."""

    encoder: VisionEncoder
    skipper: FrameSkipper | None

    @classmethod
    def build(cls, config: LivelensConfig) -> EncodeStep:
        return cls(vision_encoder(config), FrameSkipper(config.cache.skip) if config.cache.skip_frames else None)

    def encode(self, batches: Sequence[FrameBatch]) -> list[FeatureBatch]:
        """One forward pass over the frames the skipper lets through (a StageError fails the whole batch)."""
        return encode_skipping(self.encoder.encode, self.skipper, list(batches))

    def forget(self, tenant_id: str, stream_id: str) -> None:
        """Drop the stream's token cache, stats and skip state (pipelines/ingest/idle.py)."""
        self.encoder.forget((tenant_id, stream_id))
        if self.skipper is not None:
            self.skipper.forget(tenant_id, stream_id)

    # The ViT token cache (about 14.5 MB a stream) and the encoder's stats are not kept for a returning stream:
    # the cache is a cache (its first frame back is encoded in full), the stats restart. The skip state is kept.
    def snapshot_stream(self, tenant_id: str, stream_id: str) -> dict[str, Any] | None:
        return snapshot_steps({"skipper": self.skipper}, tenant_id, stream_id)

    def restore_stream(self, tenant_id: str, stream_id: str, state: dict[str, Any]) -> None:
        restore_steps({"skipper": self.skipper}, tenant_id, stream_id, state)


@dataclass
class CompressStep:
    """The differential token drop (and pruning), then the event-boundary detector on its drop ratio."""

    compressor: TokenDropCompressor
    boundaries: BoundaryDetector
    pixel_mode: bool

    @classmethod
    def build(cls, config: LivelensConfig) -> CompressStep:
        return cls(TokenDropCompressor(config.compress, config.drop, config.prune), BoundaryDetector(config.boundaries),
                   config.drop.mode == "pixel")

    def compress(self, features: FeatureBatch, frames: FrameBatch | None) -> CompressedBatch:
        # Pixel-mode drop compares frame patches, so it needs the frames as well.
        images = frames.images if self.pixel_mode and frames is not None else None
        compressed = tag_stage("compress", self.compressor.compress, features, images)
        return tag_stage("compress", self.boundaries.mark, compressed)

    def forget(self, tenant_id: str, stream_id: str) -> None:
        self.compressor.forget(tenant_id, stream_id)
        self.boundaries.forget(tenant_id, stream_id)

    def snapshot_stream(self, tenant_id: str, stream_id: str) -> dict[str, Any] | None:
        return snapshot_steps({"compressor": self.compressor, "boundaries": self.boundaries}, tenant_id, stream_id)

    def restore_stream(self, tenant_id: str, stream_id: str, state: dict[str, Any]) -> None:
        restore_steps({"compressor": self.compressor, "boundaries": self.boundaries}, tenant_id, stream_id, state)


@dataclass
class SeparateEncodeCompress:
    """`EncodeStep` then `CompressStep` in one process (backfill, replay with `encode.fused` off)."""

    encode: EncodeStep
    compress: CompressStep

    @property
    def encoder(self) -> VisionEncoder:
        return self.encode.encoder

    def process(self, batches: Sequence[FrameBatch]) -> list[CompressedBatch | StageError]:
        """One result per batch, in order. A StageError from the encoder fails the whole call (one forward pass);
        one from compression is that segment's result."""
        batches = list(batches)
        out: list[CompressedBatch | StageError] = []
        for frames, features in zip(batches, self.encode.encode(batches)):
            try:
                out.append(self.compress.compress(features, frames))
            except StageError as exc:
                out.append(exc)
        return out

    def stateful(self) -> dict[str, Stateful | None]:
        return {"compressor": self.compress.compressor, "boundaries": self.compress.boundaries,
                "skipper": self.encode.skipper}


@dataclass
class FusedEncodeCompress:
    """Encode and compress in one pass on the encoder's device, then the event-boundary detector: what
    `EncodeStep` then `CompressStep` compute, without every token travelling to the host. No frame skip or
    ViT token cache here (the config refuses `encode.fused: on` with either; `auto` picks the separate steps)."""

    fused: EncodeCompressor
    boundaries: BoundaryDetector

    @classmethod
    def build(cls, config: LivelensConfig) -> FusedEncodeCompress:
        compressor = DeviceTokenCompressor(config.compress, config.drop, config.prune, device=config.encode.device)
        return cls(EncodeCompressor(vision_encoder(config), compressor), BoundaryDetector(config.boundaries))

    @property
    def encoder(self) -> VisionEncoder:
        return self.fused.encoder

    def process(self, batches: Sequence[FrameBatch]) -> list[CompressedBatch | StageError]:
        """One result per batch, in order. A StageError from the device pass fails the whole call; one from the
        boundary detector is that segment's result."""
        out: list[CompressedBatch | StageError] = []
        for compressed in tag_stage("encode", self.fused.process, list(batches)):
            try:
                out.append(tag_stage("compress", self.boundaries.mark, compressed))
            except StageError as exc:
                out.append(exc)
        return out

    def stateful(self) -> dict[str, Stateful | None]:
        # The names the separate steps' state is stored under: the snapshot formats are the same.
        return {"compressor": self.fused.compressor, "boundaries": self.boundaries}

    def forget(self, tenant_id: str, stream_id: str) -> None:
        """Drop the stream's device tables, encoder stats and boundary state (pipelines/ingest/idle.py)."""
        self.fused.compressor.forget(tenant_id, stream_id)
        self.fused.encoder.forget((tenant_id, stream_id))
        self.boundaries.forget(tenant_id, stream_id)

    def snapshot_stream(self, tenant_id: str, stream_id: str) -> dict[str, Any] | None:
        """The device tables' rows and the boundary state of one stream (the encoder's stats restart)."""
        return snapshot_steps(self.stateful(), tenant_id, stream_id)

    def restore_stream(self, tenant_id: str, stream_id: str, state: dict[str, Any]) -> None:
        restore_steps(self.stateful(), tenant_id, stream_id, state)


def encode_compress(config: LivelensConfig) -> SeparateEncodeCompress | FusedEncodeCompress:
    """The frames-to-compressed steps `encode.fused` chooses, for one process."""
    if config.fused_encode:
        return FusedEncodeCompress.build(config)
    return SeparateEncodeCompress(EncodeStep.build(config), CompressStep.build(config))


def text_reader(config: LivelensConfig) -> ScreenTextReader | None:
    """The on-screen text reader; None when `ocr.enabled` is off (the chain then stores no text)."""
    if not config.ocr.enabled:
        return None
    from operators.ocr import ScreenTextReader

    return ScreenTextReader(config.ocr)


def speech_recognizer(config: LivelensConfig) -> Recognizer | None:
    """The recogniser ``transcript.asr`` uses: voice activity detection, then ``speech.engine``
    (operators/speech); None while asr is off."""
    if not (config.transcript.enabled and config.transcript.asr):
        return None
    from operators.speech.recognizer import SpeechRecognizer

    return SpeechRecognizer(config.speech)


def transcriber(config: LivelensConfig, recognizer: Recognizer | None = None,
                reader: ScreenTextReader | None = None) -> Transcriber | None:
    """The transcript stage (captions, subtitles and, with ``transcript.asr``, ``recognizer``'s speech); None when
    ``transcript.enabled`` is off. It embeds with the OCR reader's MiniLM when there is one (loaded once)."""
    if not config.transcript.enabled:
        return None
    recognizer = recognizer if recognizer is not None else speech_recognizer(config)
    return Transcriber(config.transcript, reader.embedder if reader is not None else None, recognizer)


@dataclass
class OperatorChain:
    """Every step between decode and memory, in one process (backfill, replay)."""

    visual: SeparateEncodeCompress | FusedEncodeCompress
    reader: ScreenTextReader | None
    transcriber: Transcriber | None = None

    @classmethod
    def build(cls, config: LivelensConfig, recognizer: Recognizer | None = None) -> OperatorChain:
        """``recognizer``: the speech recogniser for ``transcript.asr`` (anything with `Recognizer`'s interface);
        None builds the configured one (`speech_recognizer`)."""
        reader = text_reader(config)
        return cls(encode_compress(config), reader, transcriber(config, recognizer, reader))

    def stateful(self) -> dict[str, Stateful]:
        """The steps that keep per-stream state, by the name their snapshot is stored under."""
        steps: dict[str, Stateful | None] = {**self.visual.stateful(), "ocr": self.reader,
                                             "transcript": self.transcriber}
        return {name: step for name, step in steps.items() if step is not None}

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {name: step.snapshot() for name, step in self.stateful().items()}

    def restore(self, state: dict[str, dict[str, Any]]) -> None:
        """Restore every stateful step from `snapshot`'s result; ValueError when the steps differ (a snapshot
        taken with another configuration, e.g. OCR or frame skip switched on or off since)."""
        steps = self.stateful()
        if set(state) != set(steps):
            raise ValueError(f"the snapshot holds the state of {sorted(state)}, but this chain's stateful steps "
                             f"are {sorted(steps)}")
        for name, step in steps.items():
            step.restore(state[name])

    def forget(self, tenant_id: str, stream_id: str) -> None:
        for step in self.stateful().values():
            step.forget(tenant_id, stream_id)
