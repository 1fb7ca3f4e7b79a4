"""One frozen configuration tree for every livelens process.

Each floor keeps its own sections (operators/config.py, memory_store/config.py, the moderation policy in
operators/moderation/policy.py); this root composes them with the sections of the pipeline layer.

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

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from memory_store.config import MemoryConfig
from operators.config import (
    AnswerConfig,
    BoundaryConfig,
    CacheConfig,
    CompressConfig,
    DecodeConfig,
    DropConfig,
    EncodeConfig,
    OcrConfig,
    PruneConfig,
    SpeechConfig,
    TranscriptConfig,
)
from operators.moderation.policy import ModerationConfig
from pipelines.settings.connections import KafkaConfig, RayConfig, RedisConfig
from pipelines.settings.runtime import (
    ArchiveConfig,
    BackfillConfig,
    ClipConfig,
    MetricsConfig,
    PipelineConfig,
    PlacementConfig,
    StreamsConfig,
)
from pipelines.settings.serving import DashboardConfig, QueryConfig, ServeConfig, WebhookConfig

Profile = Literal["offline", "gpu", "cluster"]


class LivelensConfig(BaseSettings):
    """The whole configuration. Frozen: build a new one to change it."""

    model_config = SettingsConfigDict(
        frozen=True,
        env_prefix="LIVELENS_",
        env_nested_delimiter="__",
        extra="forbid",
        # Errors name the field and the rule, not the value given: sections hold keys and passwords.
        hide_input_in_errors=True,
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
    transcript: TranscriptConfig = TranscriptConfig()
    speech: SpeechConfig = Field(SpeechConfig(), description="The speech recogniser transcript.asr runs "
                                 "(operators/speech).")
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
    webhooks: WebhookConfig = WebhookConfig()
    backfill: BackfillConfig = BackfillConfig()
    dashboard: DashboardConfig = DashboardConfig()
    clips: ClipConfig = ClipConfig()
    streams: StreamsConfig = StreamsConfig()
    archive: ArchiveConfig = ArchiveConfig()
    moderation: ModerationConfig = Field(
        ModerationConfig(), description="Risk screening of every stream (pipelines/moderation/moderator.py). Off by default: "
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

    @model_validator(mode="after")
    def _asr_hears_audio(self) -> LivelensConfig:
        if self.transcript.enabled and self.transcript.asr:
            if not self.decode.audio:
                raise ValueError("transcript.asr recognises the decoded audio: set decode.audio too")
            if self.speech.engine == "none":
                raise ValueError("transcript.asr needs a speech engine: set speech.engine (pocketsphinx, whisper)")
        return self

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

    @model_validator(mode="after")
    def _fused_encode_computes_every_frame(self) -> LivelensConfig:
        if self.encode.fused == "on" and (blockers := self._fused_encode_blockers()):
            raise ValueError(f"encode.fused 'on' runs every frame through the tower in full: turn off {blockers}, "
                             "or set encode.fused to 'auto' or 'off'")
        return self

    def _fused_encode_blockers(self) -> list[str]:
        return [name for name, on in (("cache.skip_frames", self.cache.skip_frames),
                                      ("cache.token_cache", self.cache.token_cache)) if on]

    @property
    def fused_encode(self) -> bool:
        """Whether encode and compress run as one step on the encoder's device (`encode.fused`)."""
        if self.encode.fused == "auto":
            return self.encode.device == "cuda" and not self._fused_encode_blockers()
        return self.encode.fused == "on"

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
# model instead, set encode.model and answer.model to the same VLM (docs/operations.md). OCR runs on
# onnxruntime's CUDA provider (onnxruntime-gpu, docs/deploy.md), each reader holding a tenth of the GPU and one
# onnxruntime CPU thread: the sample broadcast read incrementally at 13.5 ms a frame and 17.9 ms of host CPU on
# an H100 host (36.3 with onnxruntime's default thread per core), against 24 and 46 ms on two CPU threads
# (BENCHMARKS.md, "OCR on the GPU: the shapes").
PROFILE_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "offline": {},
    "gpu": {
        "encode": {
            "model": "google/siglip-base-patch16-224",
            "device": "cuda",
            "dtype": "bfloat16",
            "batch_frames": 256,
            "max_batch_wait_ms": 30.0,
            # Resize and pixel cells in one read of the uint8 frames: the fused path at 90-91% of the bare tower
            # at 640x360 on an H100 (chunk 512) against 80-82% in torch (BENCHMARKS.md, "Resize and cells in one
            # read of the uint8 frames").
            "preprocess": "triton",
        },
        "answer": {"model": "Qwen/Qwen2.5-1.5B-Instruct", "device": "cuda", "dtype": "bfloat16"},
        "pipeline": {"decoders": 8, "encoders": 1, "sources": 2, "max_inflight_segments": 32},
        # GPU hosts are sized by their decode cores: at 1 frame/s this decodes 2.3-3x fewer frames, the same
        # frames out, and closed captions come from the packets (operators/cc_data.py).
        "decode": {"skip_unsampled": True},
        "ocr": {"device": "cuda", "threads": 1},
        "placement": {"ocr": {"num_gpus": 0.1}},
    },
}
# cluster: the gpu profile's models, with every stage tagged for its node type (ray_cluster.yaml, k8s/) and
# holding the CPUs it uses, so that the autoscaler adds CPU workers for decode / OCR and GPU workers for
# encode / answer. OCR stays on the CPU workers, which scale apart from the GPUs: set ocr.device=cuda and
# placement.ocr's tag to livelens_gpu_worker to move it. Each OCR reader runs one onnxruntime thread, as it holds
# one CPU: with onnxruntime's default thread per host core, two readers sharing 2 cores spent 38-56 ms of CPU a
# frame instead of 28-33 (BENCHMARKS.md, "OCR threads per reader"). Replica counts stay a per-deployment choice
# (docs/deploy.md sizes them).
_CPU_NODE = {"livelens_cpu_worker": 0.01}
_GPU_NODE = {"livelens_gpu_worker": 0.01}
PROFILE_DEFAULTS["cluster"] = {
    **PROFILE_DEFAULTS["gpu"],
    "ocr": {"device": "cpu", "threads": 1},
    "placement": {
        "source": {"num_cpus": 0.5, "resources": _CPU_NODE},
        "decode": {"num_cpus": 1, "resources": _CPU_NODE},
        "compress": {"num_cpus": 0.5, "resources": _CPU_NODE},
        "ocr": {"num_cpus": 1, "resources": _CPU_NODE},
        "transcript": {"num_cpus": 0.5, "resources": _CPU_NODE},
        "memory": {"num_cpus": 1, "resources": _CPU_NODE},
        "standing": {"num_cpus": 0.5, "resources": _CPU_NODE},
        "query": {"num_cpus": 0.5, "resources": _CPU_NODE},
        "moderate": {"num_cpus": 1, "resources": _CPU_NODE},
        "verify": {"num_cpus": 1, "resources": _GPU_NODE},
        "encode": {"num_cpus": 2, "resources": _GPU_NODE},
        "answer": {"num_cpus": 1, "resources": _GPU_NODE},
    },
}
