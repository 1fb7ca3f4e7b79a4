"""Deployment: stage placement options, the Ray cluster launcher config and the Kubernetes manifests.

All offline: no Ray runtime, no cluster, no network. ray_cluster.yaml goes through Ray's own
prepare_config / validate_config. Core Kubernetes objects are checked against the official schemas that
kubernetes-validate ships (strict: unknown fields fail); RayService, Kafka, KafkaNodePool, KafkaTopic and
ServiceMonitor against the schemas in k8s/schemas/ (k8s/schemas/README.md), whose pod templates, label
selectors and resource requirements are the official core definitions again.
"""

from __future__ import annotations

import copy
import json
import os
from importlib import import_module, resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

from pipelines.config import KafkaConfig, LivelensConfig
from pipelines.ray.placement import STAGES, actor_options

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
# The oldest Kubernetes minor the manifests are checked against (managed clusters all offer it).
K8S_VERSION = "1.33.0"
CRD_SCHEMAS = {
    ("ray.io/v1", "RayService"): "rayservice.schema.yaml",
    ("kafka.strimzi.io/v1", "Kafka"): "kafka.schema.yaml",
    ("kafka.strimzi.io/v1", "KafkaNodePool"): "kafkanodepool.schema.yaml",
    ("kafka.strimzi.io/v1", "KafkaTopic"): "kafkatopic.schema.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.schema.yaml",
}
CPU_TAG, GPU_TAG = "livelens_cpu_worker", "livelens_gpu_worker"


@pytest.fixture(autouse=True)
def _no_local_config(monkeypatch, tmp_path):
    """Only the arguments given here shape a config: no livelens.toml, no LIVELENS_* from the shell."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("LIVELENS_") or n == "RAY_ADDRESS"]:
        monkeypatch.delenv(name)


# --- stage placement -------------------------------------------------------------------------------

CPU_STAGE = {"resources": {CPU_TAG: 0.01}}
GPU_STAGE = {"resources": {GPU_TAG: 0.01}}


@pytest.mark.parametrize("kwargs, stage, expected", [
    ({}, "decode", {}),
    ({}, "encode", {}),
    ({}, "answer", {}),
    (dict(profile="gpu"), "encode", {"num_gpus": 1}),
    (dict(profile="gpu"), "answer", {"num_gpus": 1}),
    (dict(profile="gpu"), "decode", {}),
    (dict(profile="gpu"), "ocr", {"num_gpus": 0.1}),  # OCR on onnxruntime's CUDA provider, a share of the GPU
    (dict(ocr={"device": "cuda"}), "ocr", {"num_gpus": 1}),
    (dict(profile="cluster"), "source", {"num_cpus": 0.5, **CPU_STAGE}),
    (dict(profile="cluster"), "decode", {"num_cpus": 1, **CPU_STAGE}),
    (dict(profile="cluster"), "ocr", {"num_cpus": 1, **CPU_STAGE}),
    (dict(profile="cluster"), "memory", {"num_cpus": 1, **CPU_STAGE}),
    (dict(profile="cluster"), "query", {"num_cpus": 0.5, **CPU_STAGE}),
    (dict(profile="cluster"), "encode", {"num_cpus": 2, "num_gpus": 1, **GPU_STAGE}),
    (dict(profile="cluster"), "answer", {"num_cpus": 1, "num_gpus": 1, **GPU_STAGE}),
    (dict(profile="cluster"), "moderate", {"num_cpus": 1, **CPU_STAGE}),
    # The verifier runs the answer model when it is a VLM ("auto" with an answer model): a GPU then.
    (dict(profile="cluster"), "verify", {"num_cpus": 1, "num_gpus": 1, **GPU_STAGE}),
    (dict(profile="cluster", moderation={"verifier": "rules"}), "verify", {"num_cpus": 1, **GPU_STAGE}),
    (dict(profile="gpu", moderation={"verifier": "vlm"}), "verify", {"num_gpus": 1}),
    (dict(moderation={"verifier": "auto"}), "verify", {}),
    # Overriding one field keeps the profile's other fields of that stage (its node tag).
    (dict(profile="cluster", placement={"encode": {"num_gpus": 0.5}}), "encode",
     {"num_cpus": 2, "num_gpus": 0.5, **GPU_STAGE}),
    (dict(profile="cluster", placement={"decode": {"resources": {"spot": 0.1}}}), "decode",
     {"num_cpus": 1, "resources": {"spot": 0.1}}),
    (dict(placement={"ocr": {"num_cpus": 2, "resources": {"ocr_box": 1}}}), "ocr",
     {"num_cpus": 2, "resources": {"ocr_box": 1}}),
    (dict(encode={"device": "cuda"}, placement={"encode": {"num_gpus": 2}}), "encode", {"num_gpus": 2}),
    (dict(placement={"compress": {"num_gpus": 0.25}}), "compress", {"num_gpus": 0.25}),
    # Decoders on NVDEC hold the share they are given: Ray hides the GPU from actors that hold none.
    (dict(profile="gpu", decode={"hardware": "nvdec"}, placement={"decode": {"num_gpus": 0.02}}), "decode",
     {"num_gpus": 0.02}),
])
def test_actor_options_per_stage(kwargs, stage, expected):
    assert actor_options(LivelensConfig(**kwargs), stage) == expected


@pytest.mark.parametrize("profile", ["gpu", "cluster"])
def test_profile_ocr_readers_run_no_more_threads_than_they_hold(profile):
    """onnxruntime starts a thread per host core unless told: a reader holding one CPU must say one thread, or
    readers sharing a node contend for every core (BENCHMARKS.md, "OCR threads per reader")."""
    config = LivelensConfig(profile=profile)
    assert config.ocr.threads is not None
    assert config.ocr.threads <= actor_options(config, "ocr").get("num_cpus", 1)


def test_placement_from_environment(monkeypatch):
    monkeypatch.setenv("LIVELENS_PROFILE", "cluster")
    monkeypatch.setenv("LIVELENS_PLACEMENT__DECODE__NUM_CPUS", "2")
    monkeypatch.setenv("LIVELENS_PLACEMENT__ANSWER__RESOURCES", '{"big_gpu": 0.5}')
    config = LivelensConfig()
    assert actor_options(config, "decode") == {"num_cpus": 2, **CPU_STAGE}
    assert actor_options(config, "answer") == {"num_cpus": 1, "num_gpus": 1, "resources": {"big_gpu": 0.5}}


@pytest.mark.parametrize("kwargs, stage, message", [
    (dict(profile="gpu", placement={"encode": {"num_gpus": 0}}), "encode", "would see no GPU"),
    (dict(answer={"device": "cuda"}, placement={"answer": {"num_gpus": 0}}), "answer", "would see no GPU"),
    (dict(profile="gpu", placement={"ocr": {"num_gpus": 0}}), "ocr", "would see no GPU"),
    (dict(decode={"hardware": "nvdec"}), "decode", "set placement.decode.num_gpus"),
    (dict(decode={"hardware": "nvdec"}, placement={"decode": {"num_gpus": 0}}), "decode", "would see no GPU"),
    ({}, "decoder", "unknown stage"),
])
def test_actor_options_refuse(kwargs, stage, message):
    with pytest.raises(ValueError, match=message):
        actor_options(LivelensConfig(**kwargs), stage)


def test_ray_accepts_the_options_and_rejects_bad_ones():
    """ActorClass.options() validates its arguments without a runtime."""
    from pipelines.ray.dag import DecodeActor, EncodeActor
    from pipelines.ray.query import AnswerActor

    config = LivelensConfig(profile="cluster")
    for cls, stage in ((DecodeActor, "decode"), (EncodeActor, "encode"), (AnswerActor, "answer")):
        cls.options(name=f"{stage}-0", **actor_options(config, stage))
    with pytest.raises(ValueError, match="num_cpus"):
        DecodeActor.options(**actor_options(LivelensConfig(placement={"decode": {"resources": {"CPU": 1}}}), "decode"))


def test_start_stages_passes_each_stage_its_options(monkeypatch):
    """The wiring in dag.py: every actor of a stage is created with that stage's options."""
    from pipelines.ray import dag, sources

    made: list[tuple[str, dict]] = []
    for module in (dag, sources):
        monkeypatch.setattr(module, "named_actor",
                            lambda cls, name, ns, detached, options, *args: made.append((name, options)))
    config = LivelensConfig(profile="cluster", pipeline={"decoders": 3, "encoders": 2},
                            moderation={"enabled": True, "moderators": 2})
    dag.start_stages(config)
    sources.start_sources(config)
    by_name = dict(made)
    p = config.pipeline
    assert len(made) == (p.decoders + p.encoders + dag.compressor_count(config) + p.ocr_readers + config.memory.shards
                         + p.standing_evaluators + p.sources + config.moderation.moderators + 1
                         + (p.transcript_readers if config.transcript.enabled else 0))
    for name, options in made:
        assert options == actor_options(config, name.split("-")[0]), name
    assert by_name["encode-1"]["resources"] == {GPU_TAG: 0.01} and by_name["encode-1"]["num_gpus"] == 1
    assert by_name["moderate-1"]["resources"] == {CPU_TAG: 0.01} and by_name["verify-0"]["num_gpus"] == 1


# --- ray_cluster.yaml ------------------------------------------------------------------------------

def _ray_cluster() -> dict:
    return yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())


def _validate_ray_cluster(raw: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    return prepared


def _hosts(node_resources: dict, options: dict) -> bool:
    need = {"CPU": options.get("num_cpus", 0), "GPU": options.get("num_gpus", 0), **options.get("resources", {})}
    return all(node_resources.get(name, 0) >= amount for name, amount in need.items() if amount)


def test_ray_cluster_yaml_passes_rays_validation():
    prepared = _validate_ray_cluster(_ray_cluster())
    types = prepared["available_node_types"]
    assert types[prepared["head_node_type"]]["resources"] == {"CPU": 0}
    for name in ("cpu_worker", "gpu_worker"):
        assert 0 < types[name]["min_workers"] <= types[name]["max_workers"]
    assert any("livelens" in command for command in prepared["worker_setup_commands"])


def test_ray_cluster_node_types_host_the_cluster_profile():
    """Each stage fits exactly one node type: decode and friends the CPU workers, encode and answer the GPU ones."""
    types = _ray_cluster()["available_node_types"]
    config = LivelensConfig(profile="cluster")
    placed = {stage: [name for name, t in types.items() if _hosts(t["resources"], actor_options(config, stage))]
              for stage in STAGES}
    gpu_stages = {"encode", "answer", "verify"}
    assert placed == {stage: ["gpu_worker" if stage in gpu_stages else "cpu_worker"] for stage in STAGES}


@pytest.mark.parametrize("path, value, error", [
    (["available_node_types", "cpu_worker", "min_worker"], 1, "'min_worker' was unexpected"),
    (["available_node_types", "gpu_worker", "resources", GPU_TAG], 0.5, "is not of type 'integer'"),
    (["max_workers"], 2, "smaller than the sum of `min_workers`"),
    (["head_node_type"], "gpu_head", "must be one of `available_node_types`"),
])
def test_ray_cluster_validation_rejects(path, value, error):
    raw = _ray_cluster()
    _set(raw, path, value)
    with pytest.raises((jsonschema.ValidationError, ValueError, KeyError), match=error):
        _validate_ray_cluster(raw)


# --- Kubernetes manifests --------------------------------------------------------------------------

def _manifests() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def _core_definitions() -> Registry:
    """The official core definitions (ObjectMeta, PodTemplateSpec, ...) that the CRD schemas refer to."""
    folder = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict"
    definitions = json.loads((folder / "_definitions.json").read_text())
    return Resource.from_contents(definitions) @ Registry()


REGISTRY = _core_definitions()


def _crd_validator(kind_key: tuple[str, str]) -> jsonschema.Draft202012Validator:
    schema = yaml.safe_load((K8S / "schemas" / CRD_SCHEMAS[kind_key]).read_text())
    return jsonschema.Draft202012Validator(schema, registry=REGISTRY)


def validate_manifest(doc: dict) -> None:
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRD_SCHEMAS:
        _crd_validator(key).validate(doc)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _find(kind: str, name: str | None = None) -> dict:
    found = [d for _, d in _manifests() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def _set(doc: Any, path: list, value: Any) -> None:
    for key in path[:-1]:
        doc = doc[key]
    doc[path[-1]] = value


def _walk(node: Any):
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from _walk(child)


@pytest.mark.parametrize("schema_file", sorted(set(CRD_SCHEMAS.values())))
def test_crd_schemas_are_valid_json_schema(schema_file):
    jsonschema.Draft202012Validator.check_schema(yaml.safe_load((K8S / "schemas" / schema_file).read_text()))


def test_every_manifest_validates():
    docs = _manifests()
    kinds = sorted({d["kind"] for _, d in docs})
    assert kinds == ["Kafka", "KafkaNodePool", "KafkaTopic", "RayService", "Secret", "Service", "ServiceMonitor",
                     "StatefulSet"]
    for file, doc in docs:
        try:
            validate_manifest(doc)
        except jsonschema.ValidationError as exc:
            pytest.fail(f"{file} {doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.absolute_path)}")


WORKER = ["spec", "rayClusterConfig", "workerGroupSpecs", 0]
HEAD_CONTAINER = ["spec", "rayClusterConfig", "headGroupSpec", "template", "spec", "containers", 0]


@pytest.mark.parametrize("kind, name, path, value, error", [
    ("RayService", None, WORKER + ["maxReplica"], 10, "'maxReplica' was unexpected"),
    ("RayService", None, WORKER + ["rayStartParams", "num-cpus"], 16, "is not of type 'string'"),
    ("RayService", None, HEAD_CONTAINER + ["resource"], {}, "'resource' was unexpected"),  # core PodSpec
    ("RayService", None, HEAD_CONTAINER + ["resources", "request"], {}, "'request' was unexpected"),
    ("RayService", None, ["spec", "rayClusterConfig", "autoscalerOptions", "upscalingMode"], "Fast", "is not one of"),
    ("RayService", None, ["spec", "rayClusterConfig", "authOptions", "mode"], "password", "is not one of"),
    ("StatefulSet", "livelens-redis", ["spec", "volumeClaimTemplate"], [], "'volumeClaimTemplate' was unexpected"),
    ("Service", "livelens-redis", ["spec", "ports", 0, "port"], "6379", "is not of type 'integer'"),
    ("Secret", "livelens", ["stringData", "redis-password"], 1234, "is not of type 'string'"),
    ("Kafka", "livelens", ["spec", "kafka", "listeners", 0, "port"], 9000, "less than the minimum of 9092"),
    ("Kafka", "livelens", ["spec", "kafka", "replicas"], 3, "'replicas' was unexpected"),
    ("KafkaNodePool", "dual", ["spec", "roles"], ["worker"], "is not one of"),
    ("KafkaTopic", "livelens-queries", ["spec", "partitions"], 0, "less than the minimum of 1"),
    ("ServiceMonitor", "livelens-ray", ["spec", "endpoints", 0, "interval"], "15 seconds", "does not match"),
    ("ServiceMonitor", "livelens-ray", ["spec", "endpoint"], [], "'endpoint' was unexpected"),
])
def test_a_wrong_field_fails_validation(kind, name, path, value, error):
    doc = copy.deepcopy(_find(kind, name))
    _set(doc, path, value)
    with pytest.raises(jsonschema.ValidationError, match=error):
        validate_manifest(doc)


def test_an_unknown_kind_fails_validation():
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate_manifest({"apiVersion": "ray.io/v1", "kind": "RayServce", "metadata": {"name": "x"}})


# --- what the manifests must agree on --------------------------------------------------------------

def _ray_start_resources(group: dict) -> dict[str, float]:
    """rayStartParams.resources is a shell-quoted JSON string: '"{\\"tag\\": 1000}"'."""
    raw = group["rayStartParams"].get("resources")
    return json.loads(json.loads(raw)) if raw else {}


def test_rayservice_worker_groups_host_the_cluster_profile():
    spec = _find("RayService")["spec"]["rayClusterConfig"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {}
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        groups[group["groupName"]] = {"CPU": float(limits["cpu"]), "GPU": float(limits.get("nvidia.com/gpu", 0)),
                                      **_ray_start_resources(group)}
    config = LivelensConfig(profile="cluster")
    placed = {stage: [name for name, res in groups.items() if _hosts(res, actor_options(config, stage))]
              for stage in STAGES}
    assert placed == {stage: ["gpu" if stage in {"encode", "answer", "verify"} else "cpu"] for stage in STAGES}


def _ray_containers() -> list[dict]:
    spec = _find("RayService")["spec"]["rayClusterConfig"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_rayservice_environment_is_a_valid_livelens_config(monkeypatch):
    """Every LIVELENS_* the pods get (literal or from the Secret) is a config field: a typo fails here."""
    from pipelines.config import SHORT_ENV

    secret = dict(_find("Secret", "livelens")["stringData"])
    # The shipped keys are placeholders that livelens refuses (tests/security); real ones stand in here.
    secret["api-keys"], secret["admin-api-key"] = '{"k-3Jf8Qw2Lz7Xc": "default"}', "adm-9Tr4Hn6Vb1Ms"
    for container in _ray_containers():
        for var in container["env"]:
            # pydantic-settings ignores an unknown top-level LIVELENS_X (misspelt fields inside a section fail).
            if var["name"].startswith("LIVELENS_") and var["name"] not in SHORT_ENV:
                assert var["name"].removeprefix("LIVELENS_").split("__")[0].lower() in LivelensConfig.model_fields
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            monkeypatch.setenv(var["name"], secret[ref["key"]] if ref else var["value"])
        config = LivelensConfig()
        assert config.profile == "cluster" and config.encode.device == "cuda"
        assert config.serve.api_keys
        assert config.redis.url.startswith("redis://") and config.kafka.bootstrap


def test_serve_config_is_valid_and_imports():
    from ray.serve.schema import (
        DeploymentSchema,
        RayActorOptionsSchema,
        ServeApplicationSchema,
        ServeDeploySchema,
    )

    raw = yaml.safe_load(_find("RayService")["spec"]["serveConfigV2"])
    # Serve ignores unknown keys; a misspelt one would silently do nothing, so they are refused here.
    for app in raw["applications"]:
        assert app.keys() <= ServeApplicationSchema.model_fields.keys()
        for deployment in app.get("deployments", []):
            assert deployment.keys() <= DeploymentSchema.model_fields.keys()
            assert deployment.get("ray_actor_options", {}).keys() <= RayActorOptionsSchema.model_fields.keys()
    serve_config = ServeDeploySchema.model_validate(raw)
    for app in serve_config.applications:
        module, attribute = app.import_path.split(":")
        assert callable(getattr(import_module(module), attribute))
        for deployment in app.deployments:
            assert deployment.ray_actor_options.resources == {CPU_TAG: 0.01}
            assert deployment.name == getattr(import_module(module), deployment.name).name


def test_every_secret_reference_resolves():
    secrets = {d["metadata"]["name"]: {**d.get("data", {}), **d.get("stringData", {})}
               for _, d in _manifests() if d["kind"] == "Secret"}
    refs = [n["secretKeyRef"] for _, doc in _manifests() for n in _walk(doc)
            if isinstance(n, dict) and "secretKeyRef" in n]
    assert len(refs) >= 5
    for ref in refs:
        assert ref["key"] in secrets[ref["name"]], ref
    secret = secrets["livelens"]
    assert f":{secret['redis-password']}@" in secret["redis-url"]


def test_kafka_topics_are_the_livelens_topics():
    kafka = KafkaConfig()
    names = [field.removesuffix("_topic") for field in KafkaConfig.model_fields if field.endswith("_topic")]
    topics = {d["spec"]["topicName"]: d for _, d in _manifests() if d["kind"] == "KafkaTopic"}
    assert sorted(topics) == sorted(kafka.topic(n) for n in names)
    cluster = _find("Kafka")["metadata"]["name"]
    assert {t["metadata"]["labels"]["strimzi.io/cluster"] for t in topics.values()} == {cluster}
    env = {v["name"]: v.get("value") for v in _ray_containers()[0]["env"]}
    assert topics[kafka.topic("segments")]["spec"]["partitions"] >= int(env["LIVELENS_PIPELINE__SOURCES"])
    # Segments are chunked below kafka.max_message_bytes; the topic must accept them.
    assert topics[kafka.topic("segments")]["spec"]["config"]["max.message.bytes"] > kafka.max_message_bytes


def test_metrics_scraping_reaches_every_ray_pod():
    service, monitor = _find("Service", "livelens-ray-metrics"), _find("ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    spec = _find("RayService")["spec"]["rayClusterConfig"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        assert service["spec"]["selector"].items() <= group["template"]["metadata"]["labels"].items()
        port = {p["name"]: p["containerPort"] for p in group["template"]["spec"]["containers"][0]["ports"]}
        assert port["metrics"] == int(group["rayStartParams"]["metrics-export-port"])


def test_redis_keeps_every_acknowledged_write():
    redis = _find("StatefulSet", "livelens-redis")["spec"]
    args = redis["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes" and args[args.index("--appendfsync") + 1] == "always"
    claim = redis["volumeClaimTemplates"][0]["metadata"]["name"]
    mounts = redis["template"]["spec"]["containers"][0]["volumeMounts"]
    assert any(m["name"] == claim and m["mountPath"] == args[args.index("--dir") + 1] for m in mounts)


# --- docs/deploy.md --------------------------------------------------------------------------------

def test_documented_single_gpu_host_config_fits_one_gpu(monkeypatch, tmp_path):
    """The livelens.toml of docs/deploy.md loads, and its encoder, OCR and answer actors fit one GPU together."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```toml\n")[1:]]
    assert len(blocks) == 1
    (tmp_path / "livelens.toml").write_text(blocks[0])
    config = LivelensConfig()
    assert config.profile == "gpu" and config.encode.device == config.answer.device == "cuda"
    assert config.ocr.device == "cuda"
    gpus = (config.pipeline.encoders * actor_options(config, "encode")["num_gpus"]
            + config.pipeline.ocr_readers * actor_options(config, "ocr")["num_gpus"]
            + config.pipeline.answerers * actor_options(config, "answer")["num_gpus"])
    assert gpus <= 1 + 1e-9  # Ray counts GPU shares in fixed point: 0.5 + 0.3 + 2 x 0.1 is a whole GPU
