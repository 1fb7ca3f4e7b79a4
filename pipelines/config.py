"""One frozen configuration tree for every livelens process.

Sources, highest priority first:
1. keyword arguments (tests, `LivelensConfig(...)`),
2. environment variables: ``LIVELENS_<SECTION>__<FIELD>`` (for example
   ``LIVELENS_DECODE__SAMPLE_FPS=2``), plus the well-known short names
   ``LIVELENS_KAFKA_BOOTSTRAP``, ``LIVELENS_REDIS_URL`` and ``RAY_ADDRESS``,
3. a TOML file named by ``LIVELENS_CONFIG`` (default ``livelens.toml`` in the
   working directory, when it exists),
4. the profile's defaults (``offline``, ``gpu`` or ``cluster``), then the field defaults.

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

from operators.moderation.policy import ModerationConfig

Profile = Literal["offline", "gpu", "cluster"]
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
    hardware: Literal["cpu", "nvdec"] = Field(
        "cpu", description="nvdec: full decode on the GPU's video decoders through FFmpeg's <codec>_cuvid (PyAV), "
        "for sampling that needs every frame decoded. keyframes_only stays on the CPU (cuvid ignores skip_frame; "
        "one keyframe is cheap on a core). Where cuvid cannot open (no GPU or driver, a codec without cuvid) the "
        "CPU decoder is used and a warning says so.")
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
    attention: Literal["sdpa", "eager"] = Field(
        "sdpa", description="Attention kernel of the tower: fused scaled-dot-product (torch SDPA: flash or "
        "memory-efficient kernels on a GPU) or transformers' eager matmul-softmax-matmul. Eager only to debug.")
    compile: bool = Field(
        False, description="torch.compile the tower's forward pass (cuda only), compiled at its first batch "
        "(~15 s), once more for a dynamic batch size. SigLIP-B/16 on an H100: +57% on noise-like frames, +9% on "
        "mostly still ones (BENCHMARKS.md); not yet measured with live partial batches, hence off.")


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
    snapshot_every_frames: int = Field(
        2000, ge=1, description="Index changes (entries added or removed) between FAISS snapshots.")
    shards: int = Field(1, ge=1, description="Memory actors; tenants are spread over them by hash.")
    # Tier budgets, per stream (memory_store/tiers.py, docs/architecture.md "Memory tiers").
    short_max_tokens: int = Field(
        60_000, ge=1, description="Short tier: kept tokens per stream; the oldest frames lose theirs first. "
        "600 SigLIP frames pruned to 60 tokens fit 36,000.")
    short_max_bytes: int = Field(96 << 20, ge=1, description="Short tier: bytes of tokens and positions per stream.")
    mid_max_tokens: int = Field(
        100_000, ge=1, description="Mid tier: tokens of event segments per stream (after removing tokens that "
        "repeat within their event); the oldest events lose their tokens first and stay searchable.")
    mid_max_bytes: int = Field(160 << 20, ge=1, description="Mid tier: bytes of event token blobs per stream.")
    mid_similarity: float = Field(
        0.9, ge=-1.0, le=1.0, description="Mid tier: a token is redundant, and left out of its event, when its "
        "cosine to the last token the event kept at the same position is above this. Lower keeps fewer.")
    max_event_s: float = Field(
        300.0, gt=0, description="An event with no boundary for this long (a static camera) is closed and a new "
        "one begins, so that every event is indexed and evictable within this delay.")
    representative_frames: int = Field(
        2, ge=1, description="Frames named per event segment: those nearest the event's mean embedding.")
    long_max_entries: int = Field(
        20_000, ge=2, description="Long tier: index entries (frames, event segments, merged entries) per stream; "
        "past it the oldest are merged into time-ordered k-means centroids. 5.5 h of frames at 1 fps.")
    long_max_bytes: int = Field(
        128 << 20, ge=1, description="Long tier: bytes per stream of the entries' hashes and thumbnails.")
    merge_low_water: float = Field(
        0.75, gt=0.0, lt=1.0, description="A merge brings the long tier down to this fraction of its budgets, so "
        "merges run every few hundred entries, not on every write.")
    merge_factor: int = Field(
        4, ge=2, description="Members per merged centroid, on average, in one merge. Higher merges fewer, older "
        "entries harder; lower touches more entries per merge.")
    retention_s: float = Field(
        7 * 86400.0, gt=0, description="Entries that ended longer ago than this before the stream's newest frame "
        "(on write) or the clock (sweeps, for paused and deleted streams) are deleted from every tier.")
    retention_sweep_s: float = Field(
        600.0, gt=0, description="How often a memory actor applies retention to streams that no longer write.")
    ivf_min_vectors: int = Field(
        50_000, ge=1000, description="A tenant's index turns from exact (flat) into IVF once it holds this many "
        "vectors, and back under half of it. Searches scoped to streams or times stay exact.")
    ivf_nprobe: int = Field(16, ge=1, description="IVF lists probed by unscoped searches: more is slower, closer to exact.")


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
    token_cache: bool = Field(
        False, description="Run CLIP / SigLIP / ViT towers through the token cache (settings in `vit`): "
        "non-reference frames recompute only their least similar tokens. Other architectures compute in full "
        "and the encoder says so in its log. BENCHMARKS.md: 22-24% encoder time saved on CPU, none on an H100.")
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


class MetricsConfig(_Section):
    """How often the gauges that cost a request are refreshed (pipelines/metrics.py; counters are per event)."""

    lag_interval_s: float = Field(
        5.0, gt=0, description="Seconds between a source's end-offset requests for its consumer-lag gauges. Lower "
        "shows lag sooner, at one broker request per source per interval.")
    memory_interval_s: float = Field(
        10.0, gt=0, description="Seconds between a memory shard's stats readings (Redis counts per tenant) for its "
        "frames / tokens / bytes gauges.")


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


class StagePlacement(_Section):
    """What each actor of one stage asks Ray for (pipelines/placement.py turns it into actor options)."""

    num_cpus: float | None = Field(
        None, ge=0, description="CPUs each actor holds. None: Ray's actor default (1 CPU to be placed, none held "
        "while it runs), which lets a dozen actors share a 2-core laptop. On a cluster set it, so that the "
        "autoscaler sees the demand and adds nodes.")
    num_gpus: float | None = Field(
        None, ge=0, description="GPUs each actor holds. None: 1 for encode and answer when their device is cuda, "
        "else none. A fraction (0.5) packs two actors onto one GPU.")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources each actor asks for, e.g. "
        "{\"livelens_gpu_worker\": 0.01}: the actor is then placed only on nodes that declare them "
        "(ray_cluster.yaml, k8s/rayservice.yaml). The amount is a tag, not a budget: nodes declare 1000.")


class PlacementConfig(_Section):
    """Ray resources per stage. The defaults ask for nothing custom, so one machine runs every stage; the
    `cluster` profile tags CPU stages for CPU worker nodes and encode / answer for GPU worker nodes."""

    source: StagePlacement = StagePlacement()
    decode: StagePlacement = StagePlacement()
    encode: StagePlacement = StagePlacement()
    compress: StagePlacement = StagePlacement()
    ocr: StagePlacement = StagePlacement()
    memory: StagePlacement = StagePlacement()
    standing: StagePlacement = StagePlacement()
    answer: StagePlacement = StagePlacement()
    query: StagePlacement = Field(StagePlacement(), description="The Kafka query consumer.")
    moderate: StagePlacement = Field(StagePlacement(), description="Moderation actors (when moderation.enabled).")
    verify: StagePlacement = Field(
        StagePlacement(), description="The moderation verifier; a VLM verifier runs the answer model on "
        "answer.device, so it gets a GPU like answer does.")


class DashboardConfig(_Section):
    """The live ops overview (`GET /v1/overview`, the web dashboard, `livelens status`; pipelines/overview.py)."""

    stalled_after_s: float = Field(
        10.0, gt=0, description="A stream with no segment stored for this long is stalled. Segments are ~2 s, so "
        "a live stream stores one every 2 s plus jitter; lower flags hiccups, higher hides real stalls longer.")
    ended_after_s: float = Field(
        300.0, gt=0, description="A stalled stream with nothing waiting for it on its Kafka partition counts as "
        "ended after this long without a stored segment.")
    fps_window_s: float = Field(
        10.0, gt=0, description="Frames stored over the last this many seconds give a stream's fps. Longer is "
        "steadier (segments land in bursts of ~2 s of frames), shorter reacts faster.")
    alerts_scanned: int = Field(
        500, ge=1, description="Each stream's last alert is looked for among its tenant's newest this many alerts.")
    timeline_frames: int = Field(120, ge=1, le=10_000, description="Newest frames shown on a stream's page.")
    refresh_ms: int = Field(1500, ge=200, description="How often the web pages poll for fresh numbers.")


class QueryConfig(_Section):
    """Query-time retrieval (pipelines/query_service.py)."""

    now_window_s: float = Field(
        10.0, gt=0, description="Recency gate: a question about now (\"what is on screen right now\") searches only "
        "each stream's newest this many seconds of memory, counted from its newest stored frame, not the clock "
        "(a lagging stream still answers with its latest picture).")
    rerank_depth: int = Field(
        50, ge=1, le=1000, description="Example-image queries: coarse hits reranked by late interaction over the "
        "frames' stored tokens (operators/late_interaction.py). More finds more, each costs a token read.")
    rerank_weight: float = Field(
        0.5, ge=0.0, le=1.0, description="Share of the token score in a fully covered frame's blended score; 0 "
        "turns the rerank off.")


class ServeConfig(_Section):
    host: str = "127.0.0.1"
    port: int = 8765
    api_keys: dict[str, str] = Field(
        default_factory=dict,
        description="API key -> tenant id. When set, every HTTP call needs `Authorization: Bearer <key>` (or "
        "`X-API-Key`), and the key, not the request, decides the tenant. Env LIVELENS_SERVE__API_KEYS as JSON.")
    answer_ttl_s: int = Field(3600, ge=60, description="How long answers to asynchronous queries are kept.")


class BackfillConfig(_Section):
    """`livelens backfill` and `livelens replay`: batch work beside live ingest (docs/operations.md)."""

    nice: int = Field(
        10, ge=0, le=19, description="CPU niceness of the backfill / replay process and its decode workers. Live "
        "actors run at 0, so where both compete for a core the kernel gives live ingest ~10x the CPU time "
        "(weights 1024 vs 110); an idle core still goes to the batch work. 0: no preference.")


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
    metrics: MetricsConfig = MetricsConfig()
    placement: PlacementConfig = PlacementConfig()
    query: QueryConfig = QueryConfig()
    serve: ServeConfig = ServeConfig()
    backfill: BackfillConfig = BackfillConfig()
    dashboard: DashboardConfig = DashboardConfig()
    moderation: ModerationConfig = Field(
        ModerationConfig(), description="Risk screening of every stream (pipelines/moderation.py). Off by default: "
        "it runs nudenet on every sampled frame.")

    @model_validator(mode="before")
    @classmethod
    def _apply_profile_and_short_env(cls, data: Any) -> Any:
        data = dict(data or {})
        profile = data.get("profile") or os.environ.get("LIVELENS_PROFILE", "offline")
        for section, values in PROFILE_DEFAULTS.get(profile, {}).items():
            data[section] = _merge(cls.model_fields[section].annotation, values, _as_dict(data.get(section)))
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


def _merge(model: Any, defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """`given` over a profile's `defaults`, field by field down through nested sections, so that setting
    placement.encode.num_cpus keeps the profile's placement.encode.resources. Other values replace whole."""
    out = dict(defaults)
    for key, value in given.items():
        field = model.model_fields.get(key)
        section = field.annotation if field is not None else None
        if isinstance(section, type) and issubclass(section, BaseModel) and isinstance(out.get(key), dict):
            out[key] = _merge(section, out[key], _as_dict(value))
        else:
            out[key] = value
    return out


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
# cluster: the gpu profile's models, with every stage tagged for its node type (ray_cluster.yaml, k8s/) and
# holding the CPUs it uses, so that the autoscaler adds CPU workers for decode / OCR and GPU workers for
# encode / answer. Replica counts stay a per-deployment choice (docs/deploy.md sizes them).
_CPU_NODE = {"livelens_cpu_worker": 0.01}
_GPU_NODE = {"livelens_gpu_worker": 0.01}
PROFILE_DEFAULTS["cluster"] = {
    **PROFILE_DEFAULTS["gpu"],
    "placement": {
        "source": {"num_cpus": 0.5, "resources": _CPU_NODE},
        "decode": {"num_cpus": 1, "resources": _CPU_NODE},
        "compress": {"num_cpus": 0.5, "resources": _CPU_NODE},
        "ocr": {"num_cpus": 1, "resources": _CPU_NODE},
        "memory": {"num_cpus": 1, "resources": _CPU_NODE},
        "standing": {"num_cpus": 0.5, "resources": _CPU_NODE},
        "query": {"num_cpus": 0.5, "resources": _CPU_NODE},
        "moderate": {"num_cpus": 1, "resources": _CPU_NODE},
        "verify": {"num_cpus": 1, "resources": _GPU_NODE},
        "encode": {"num_cpus": 2, "resources": _GPU_NODE},
        "answer": {"num_cpus": 1, "resources": _GPU_NODE},
    },
}
