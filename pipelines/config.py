"""One frozen configuration tree for every livelens process.

Sources, highest priority first:
1. keyword arguments (tests, `LivelensConfig(...)`),
2. environment variables: ``LIVELENS_<SECTION>__<FIELD>`` (for example
   ``LIVELENS_DECODE__SAMPLE_FPS=2``), plus the well-known short names
   ``LIVELENS_KAFKA_BOOTSTRAP``, ``LIVELENS_REDIS_URL`` and ``RAY_ADDRESS``,
3. a TOML file named by ``LIVELENS_CONFIG`` (default ``livelens.toml`` in the
   working directory, when it exists),
4. the profile's defaults (``offline`` or ``gpu``), then the field defaults.

`livelens config` prints the tree in effect.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

Profile = Literal["offline", "gpu"]
DropMode = Literal["feature", "pixel"]
BoundarySignal = Literal["drop_ratio", "curvature"]
ProcessingGuarantee = Literal["at-least-once"]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaConfig(_Section):
    bootstrap: str | None = Field(
        None,
        description="host:port list of the Kafka cluster. Env LIVELENS_KAFKA_BOOTSTRAP. "
        "Unset: `livelens up` starts a local broker and records its address.",
    )
    topic_prefix: str = "livelens."
    segments_topic: str = "video-segments"
    queries_topic: str = "queries"
    answers_topic: str = "answers"
    alerts_topic: str = "alerts"
    dead_letters_topic: str = "dead-letters"
    partitions: int = Field(8, ge=1, description="Partitions created for each topic that does not exist yet.")
    # Kafka's default message.max.bytes is 1,000,012; chunks stay below it with room for headers.
    max_message_bytes: int = Field(900_000, ge=10_000)
    ingest_group: str = "livelens-ingest"
    query_group: str = "livelens-queries"
    # kafka-python's defaults (10 s session, 3 s heartbeat) make a group join take ~23 s;
    # these make it ~3.5 s while still tolerating a GC pause or a slow poll.
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    max_poll_interval_ms: int = 120_000

    def topic(self, name: str) -> str:
        return self.topic_prefix + getattr(self, f"{name}_topic")


class RedisConfig(_Section):
    url: str | None = Field(
        None, description="redis:// URL. Env LIVELENS_REDIS_URL. Unset: `livelens up` starts a local redis-server."
    )
    # `always` makes every acknowledged write survive a crash of redis-server, which is what lets
    # the source commit Kafka offsets right after a write returns. `everysec` can lose ~1 s.
    appendfsync: Literal["always", "everysec"] = "always"


class RayConfig(_Section):
    address: str | None = Field(None, description="Ray cluster address. Env RAY_ADDRESS. Unset: a local runtime.")
    namespace: str = "livelens"
    num_cpus: int | None = Field(None, description="CPUs of a local runtime (None: all).")


class DecodeConfig(_Section):
    sample_fps: float = Field(1.0, gt=0, description="Frames per second kept from each stream.")
    keyframes_only: bool = Field(
        False, description="Decode only keyframes (FFmpeg skip_frame=NONKEY): far cheaper when sample_fps <= keyframe rate."
    )
    max_pixels: int = Field(3840 * 2160, description="Frames larger than this are rejected as oversize (dead letter).")
    thumbnail_px: int = Field(160, description="Longest side of the JPEG thumbnail kept per frame.")
    frame_px: int = Field(
        640, ge=32, description="Longest side of decoded frames. The encoder resizes to its own input; on-screen "
        "text reading needs more pixels than a ViT does (ocr.max_side), so this follows OCR, not the encoder.")


class EncodeConfig(_Section):
    model: str = Field(
        "", description="Hugging Face model id or local path. Empty in the offline profile: a tiny model built locally."
    )
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    batch_frames: int = Field(32, ge=1, description="Frames per encoder forward pass, across streams.")
    max_batch_wait_ms: float = Field(20.0, ge=0, description="How long a partial batch waits for more frames.")


class CompressConfig(_Section):
    drop_threshold: float = Field(
        0.5,
        ge=-1.0,
        le=1.0,
        description="Differential token drop: a token whose cosine to the same position in the previous frame is "
        "above this is dropped. Lower drops more (0.5 as evaluated in TimeChat-Online, 0.25 in its demo).",
    )


class MemoryConfig(_Section):
    recent_frames: int = Field(
        600, ge=1, description="Frames per stream whose kept tokens stay in Redis (the short tier)."
    )
    snapshot_every_frames: int = Field(2000, ge=1, description="Frames added between FAISS snapshots.")
    shards: int = Field(1, ge=1, description="Memory actors; tenants are spread over them by hash.")


class OcrConfig(_Section):
    """On-screen text reading (operators/ocr.py), re-read only where the picture changed."""

    enabled: bool = Field(
        True, description="Run the stage. The pipeline builds no reader when False (building one is then an error)."
    )
    min_confidence: float = Field(
        0.6, ge=0.0, le=1.0,
        description="Lines the recogniser is less sure of (mean character probability) are dropped. Higher drops "
        "more misreads of textures and logos, and more real but small or blurred text.",
    )
    change_threshold: float = Field(
        0.01, ge=0.0, le=1.0,
        description="A frame is read again when the mean absolute grey difference (0..1, on a 128x72 thumbnail) to "
        "the last read frame of its stream is at or above this. Lower re-reads more often (cost); higher reuses "
        "stale text longer. 0.01 re-reads on a swapped lower-third headline (~0.016) and on cuts, not on the noise "
        "of a static shot (~0.003). No value catches a one-digit change (a score, a clock: ~0.0005, below the "
        "noise); 0 reads every frame.",
    )
    max_side: int = Field(
        960, ge=32,
        description="Frames are downscaled to this longest side before OCR (never upscaled), to bound its cost. "
        "Text set below ~8 px after scaling is lost: a 1080p ticker set at 16-22 px reads at 960 and is garbled at "
        "640. A frame with 3 lines costs ~250 ms at 960 and ~190 ms at 640 on 2 CPU cores.",
    )
    min_text_chars: int = Field(
        3, ge=1, description="Lines with fewer non-space characters are dropped: lone letters are mostly misreads."
    )


class PruneConfig(_Section):

    keep_fraction: float = Field(
        60 / 196, gt=0.0, le=1.0,
        description="Per-frame budget as a fraction of the tokens per frame, rounded (at least 1): 60 of SigLIP's "
        "196 as in STC-Pruner, 20 of the tiny CLIP's 64. Lower stores less and loses more of each frame's content.",
    )


class DropConfig(_Section):

    mode: DropMode = Field("feature", description="What a token is compared on: its features, or its frame patch.")
    pixel_threshold: float = Field(
        0.03, ge=0.0, le=1.0,
        description="Pixel mode: a token is dropped when its patch's mean absolute RGB difference to the previous "
        "frame is below this. 0.03 is ~5x the H.264 noise of a static real camera (0.003-0.006 per patch); lower "
        "keeps noise, higher drops slow or small motion.",
    )



class FrameSkipConfig(_Section):
    grid: tuple[int, int] = Field(
        (16, 16), description="(rows, cols) of patches the change test divides a frame into, whatever its size."
    )
    patch_threshold: float = Field(
        0.03, ge=0.0, le=1.0,
        description="A patch has changed when its mean absolute RGB difference (0..1) exceeds this. 0.03 is ~5x the "
        "H.264 noise of a static real camera (0.003-0.006); a person crossing a patch moves it by 0.05-0.3.",
    )
    changed_fraction: float = Field(
        0.02, ge=0.0, le=1.0,
        description="A frame is skipped when fewer than this fraction of its patches changed. Higher skips more and "
        "lets small movements (a hand, a ticker) go unseen until the next forced refresh.",
    )
    max_skip: int = Field(
        10, ge=0,
        description="At most this many frames in a row reuse old features; the next is encoded whatever changed. "
        "Bounds how stale a stream's features get (slow drift never crosses the per-frame test). 0 never skips.",
    )


class ViTCacheConfig(_Section):
    reference_every: int = Field(
        2, ge=1, description="Every n-th frame of a stream is a reference, computed in full (STC-Cacher: 2). "
        "1 computes every frame in full.",
    )
    recompute_fraction: float = Field(
        0.25, gt=0.0, le=1.0,
        description="Fraction of tokens recomputed per layer on other frames, the least similar to the reference "
        "(STC-Cacher: 25%). 1.0 recomputes everything and equals full compute.",
    )
    cut_similarity: float = Field(
        0.8, ge=-1.0, le=1.0,
        description="A frame whose first-layer keys have a mean cosine to the previous frame's below this is a scene "
        "cut and becomes a reference at once (an extension: STC refreshes only periodically). On the sample "
        "broadcast at 1 fps, random-weight CLIP and SigLIP-B/16 towers give 0.88-0.97 within moving scenes, 1.0 in "
        "still ones and 0.13-0.78 at cuts; re-check with real weights. -1 disables it.",
    )


class CacheConfig(_Section):
    """Encoder-side caching: frame skipping and the token cache inside the ViT."""

    skip_frames: bool = Field(
        False, description="Reuse the last features for frames whose picture barely changed (no ViT run). "
        "BENCHMARKS.md: 37-44% of frames skipped on broadcast / static-camera content at 1 fps.")
    skip: FrameSkipConfig = FrameSkipConfig()
    vit: ViTCacheConfig = ViTCacheConfig()


class BoundaryConfig(_Section):

    signal: BoundarySignal = Field("drop_ratio", description="Which per-frame change signal is thresholded.")
    k_sigma: float = Field(
        2.5, gt=0.0, description="Boundary when the signal exceeds mean + k_sigma * std of the current event "
        "(2-3 in the method). Lower finds more boundaries, and more false ones."
    )
    min_rise: float = Field(
        0.25, ge=0.0, description="The signal must also exceed the event's mean by at least this. On the sample "
        "broadcast's pixel-mode drop signal, cuts rise by 0.6-0.9 and headline swaps in the banner by 0.1-0.2."
    )
    min_event_s: float = Field(
        2.0, ge=0.0, description="Shortest event: no boundary sooner than this after the previous one."
    )


class AnswerConfig(_Section):
    model: str = Field("", description="HF causal LM or VLM id/path. Empty: extractive answers from evidence.")
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_new_tokens: int = 64
    max_evidence_frames: int = 8


class PipelineConfig(_Section):
    guarantee: ProcessingGuarantee = "at-least-once"
    sources: int = Field(1, ge=1, description="Kafka source actors in the ingest consumer group.")
    decoders: int = Field(2, ge=1)
    encoders: int = Field(1, ge=1)
    compressors: int = Field(1, ge=1)
    ocr_readers: int = Field(1, ge=1, description="On-screen text actors (when ocr.enabled).")
    standing_evaluators: int = Field(1, ge=1, description="Actors evaluating standing queries on new segments.")
    answerers: int = Field(1, ge=1)
    max_inflight_segments: int = Field(
        8, ge=1, description="Segments a source has in the DAG at once; past it, it pauses its partitions."
    )
    segment_attempts: int = Field(3, ge=1, description="Tries before a segment that keeps failing is dead-lettered.")


class ServeConfig(_Section):
    host: str = "127.0.0.1"
    port: int = 8765
    api_keys: dict[str, str] = Field(
        default_factory=dict,
        description="API key -> tenant id. When set, every HTTP call needs `Authorization: Bearer <key>` (or "
        "`X-API-Key`), and the key, not the request, decides the tenant. Env LIVELENS_SERVE__API_KEYS as JSON.")
    answer_ttl_s: int = Field(3600, ge=60, description="How long answers to asynchronous queries are kept.")


class LivelensConfig(BaseSettings):
    """The whole configuration. Frozen: build a new one to change it."""

    model_config = SettingsConfigDict(
        frozen=True,
        env_prefix="LIVELENS_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    profile: Profile = "offline"
    data_dir: Path = Field(Path(".livelens"), description="Where the local stack keeps its state. Env LIVELENS_DATA_DIR.")
    kafka: KafkaConfig = KafkaConfig()
    redis: RedisConfig = RedisConfig()
    ray: RayConfig = RayConfig()
    decode: DecodeConfig = DecodeConfig()
    encode: EncodeConfig = EncodeConfig()
    compress: CompressConfig = CompressConfig()
    memory: MemoryConfig = MemoryConfig()
    ocr: OcrConfig = OcrConfig()
    cache: CacheConfig = CacheConfig()
    drop: DropConfig = DropConfig()
    prune: PruneConfig | None = Field(None, description="Distinctive-token pruning to a per-frame budget; None: off.")
    boundaries: BoundaryConfig = BoundaryConfig()
    answer: AnswerConfig = AnswerConfig()
    pipeline: PipelineConfig = PipelineConfig()
    serve: ServeConfig = ServeConfig()

    @model_validator(mode="before")
    @classmethod
    def _apply_profile_and_short_env(cls, data: Any) -> Any:
        data = dict(data or {})
        profile = data.get("profile") or os.environ.get("LIVELENS_PROFILE", "offline")
        for section, values in PROFILE_DEFAULTS.get(profile, {}).items():
            merged = dict(values)
            merged.update(_as_dict(data.get(section)))
            data[section] = merged
        for env_name, (section, field) in SHORT_ENV.items():
            if os.environ.get(env_name):
                merged = _as_dict(data.get(section))
                merged.setdefault(field, os.environ[env_name])
                data[section] = merged
        return data

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get("LIVELENS_CONFIG", "livelens.toml"))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path.exists():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    @property
    def tiny_models_dir(self) -> Path:
        return self.data_dir / "models"


def _as_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_unset=True)
    return dict(value)


# Environment names people already use for these, honoured beside the LIVELENS_<SECTION>__ form.
SHORT_ENV: dict[str, tuple[str, str]] = {
    "LIVELENS_KAFKA_BOOTSTRAP": ("kafka", "bootstrap"),
    "LIVELENS_REDIS_URL": ("redis", "url"),
    "RAY_ADDRESS": ("ray", "address"),
}

# What a profile changes. offline: tiny random models built locally, CPU, float32.
# gpu: real Hugging Face checkpoints, bf16 on CUDA: a SigLIP dual encoder (text queries work) and a
# text LLM that answers from the evidence's times and scores. To feed stored visual tokens to the answer
# model instead, set encode.model and answer.model to the same VLM (docs/operations.md).
PROFILE_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "offline": {},
    "gpu": {
        "encode": {
            "model": "google/siglip-base-patch16-224",
            "device": "cuda",
            "dtype": "bfloat16",
            "batch_frames": 256,
            "max_batch_wait_ms": 30.0,
        },
        "answer": {"model": "Qwen/Qwen2.5-1.5B-Instruct", "device": "cuda", "dtype": "bfloat16"},
        "pipeline": {"decoders": 8, "encoders": 1, "sources": 2, "max_inflight_segments": 32},
    },
}
