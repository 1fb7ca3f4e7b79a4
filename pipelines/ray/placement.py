"""Where each stage's actors run: Ray actor options built from ``config.placement``.

The actor modules (dag.py, memory.py, query.py, ...) only name the stage an actor belongs to; this module
turns that stage's `StagePlacement` into the keyword arguments of
``ActorClass.options(...)``. Only what is set is passed, so the defaults leave
Ray's own actor defaults alone and one machine with no custom resources runs
every stage. On a cluster the `cluster` profile (or livelens.toml) tags each
stage with a custom resource that only one node type declares, which is how
decode lands on CPU workers and encode and answer on GPU workers.
"""

from __future__ import annotations

import zlib
from typing import Any

from pipelines.config import LivelensConfig, PlacementConfig

# An actor's stage is its name without the replica number (decode-3 -> decode).
STAGES: tuple[str, ...] = tuple(PlacementConfig.model_fields)


def _device(config: LivelensConfig, stage: str) -> str:
    """The device a stage computes on; only encode, OCR and answer (and a VLM verifier, which runs the answer
    model: pipelines.moderation.moderator.build_verifier) load models that can use a GPU, and decode uses the
    GPU's video decoders with ``decode.hardware = nvdec``."""
    if stage == "decode":
        return "cuda" if config.decode.hardware == "nvdec" else "cpu"
    if stage == "encode":
        return config.encode.device
    if stage == "ocr":
        return config.ocr.device
    verifier = config.moderation.verifier
    if stage == "answer" or (stage == "verify" and (verifier == "vlm" or (verifier == "auto" and config.answer.model))):
        return config.answer.device
    return "cpu"


def actor_options(config: LivelensConfig, stage: str) -> dict[str, Any]:
    """``num_cpus`` / ``num_gpus`` / ``resources`` for one actor of `stage`, as ``.options(**...)`` takes them.

    num_gpus defaults to 1 on a cuda stage: Ray sets CUDA_VISIBLE_DEVICES from what an actor reserved, so a
    cuda stage that reserved no GPU would see none and fail on its first tensor. Asking for 0 explicitly is a
    configuration error, raised here rather than as a CUDA error inside a restarting actor. Decoders on NVDEC
    have no default: a whole GPU each would leave all but one per GPU unplaced, and their share is the
    deployment's choice (docs/deploy.md).
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; placement has {', '.join(STAGES)}")
    placement = getattr(config.placement, stage)
    cuda = _device(config, stage) == "cuda"
    if cuda and stage == "decode" and placement.num_gpus is None:
        raise ValueError("decode.hardware is nvdec: set placement.decode.num_gpus to each decoder's share of a GPU "
                         "(0.02, say): Ray shows no GPU to actors that hold none, and NVDEC would not open")
    num_gpus = placement.num_gpus if placement.num_gpus is not None else (1 if cuda else 0)
    if cuda and num_gpus == 0:
        raise ValueError(f"{stage} runs on cuda but placement.{stage}.num_gpus is 0: its actors would see no GPU")
    options: dict[str, Any] = {}
    if placement.num_cpus is not None:
        options["num_cpus"] = placement.num_cpus
    if num_gpus:
        options["num_gpus"] = num_gpus
    if placement.resources:
        options["resources"] = dict(placement.resources)
    return options


def shard(key: str, n: int) -> int:
    """Which of n replicas owns ``key`` (a stream, a tenant): stable across processes and restarts (unlike
    hash()), so a stream's stateful stages stay on one replica and a restarted one finds its streams."""
    return zlib.crc32(key.encode()) % n


def memory_shard(tenant_id: str, shards: int) -> int:
    """The memory shard that owns a tenant: every tenant's data and FAISS indexes live on exactly one. The
    memory actors, the live chain's writes and `RayMemoryClient` all route by this one function."""
    return shard(tenant_id, shards)


def named_actor(cls, name: str, namespace: str, detached: bool, options: dict, *args):
    """The actor ``name`` of ``namespace``: the running one, or a new one of ``cls`` started with ``options``
    (detached: it outlives the driver that started it)."""
    opts = dict(name=name, namespace=namespace, get_if_exists=True, **options)
    if detached:
        opts["lifetime"] = "detached"
    return cls.options(**opts).remote(*args)
