"""How the pipeline runs: its actors and their placement, metrics, backfill, stream state, clips and archive."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from operators.config import Section

ProcessingGuarantee = Literal["at-least-once"]


class MetricsConfig(Section):
    """How often the gauges that cost a request are refreshed (pipelines/metrics.py; counters are per event)."""

    lag_interval_s: float = Field(
        5.0, gt=0, description="Seconds between a source's end-offset requests for its consumer-lag gauges. Lower "
        "shows lag sooner, at one broker request per source per interval.")
    memory_interval_s: float = Field(
        10.0, gt=0, description="Seconds between a memory shard's stats readings (Redis counts per tenant) for its "
        "frames / tokens / bytes gauges.")
    max_stream_series: int = Field(
        2000, ge=0, description="Streams each process names in the `stream` label; later ones count under "
        "stream=\"_other\". Ray cannot remove a series, so this bounds them however many streams come and go.")


class PipelineConfig(Section):
    guarantee: ProcessingGuarantee = "at-least-once"
    sources: int = Field(1, ge=1, description="Kafka source actors in the ingest consumer group.")
    decoders: int = Field(2, ge=1)
    encoders: int = Field(1, ge=1)
    compressors: int = Field(1, ge=1, description="Compress actors; none are started with encode.fused (the encoders "
                             "compress).")
    ocr_readers: int = Field(1, ge=1, description="On-screen text actors (when ocr.enabled).")
    transcript_readers: int = Field(1, ge=1, description="Transcript actors: captions, subtitles, speech (when "
                                    "transcript.enabled).")
    standing_evaluators: int = Field(1, ge=1, description="Actors evaluating standing queries on new segments.")
    answerers: int = Field(1, ge=1)
    max_inflight_segments: int = Field(
        8, ge=1, description="Segments a source has in the DAG at once; past it, it pauses its partitions."
    )
    segment_attempts: int = Field(
        3, ge=1, description="Tries before a segment on which our code keeps crashing (an error that is neither bad "
        "input nor infrastructure away) is dead-lettered. Infrastructure failures (Redis, Kafka, a Ray actor) are "
        "retried without limit and never dead-lettered.")
    stream_idle_s: float = Field(
        900.0, gt=0, description="Seconds without a segment after which a live actor evicts a stream's state "
        "(compressor, boundaries, frame skip, ViT token cache, encoder stats, OCR, captions): the state is kept in "
        "Redis for evicted_state_ttl_s and restored if the stream returns (the ViT token cache and the encoder's "
        "stats are not kept: they restart).")
    evicted_state_ttl_s: float = Field(
        86400.0, ge=0, description="Seconds Redis keeps an evicted stream's operator state for its return; 0 keeps "
        "none (a returning stream starts afresh: its first frame kept whole, its event boundaries restarted). A "
        "stream's state is about 0.8 MB with a ViT-B/16 in feature mode (its last frame's tokens, twice with frame "
        "skip), tens of KB in pixel mode.")
    max_streams_per_actor: int = Field(
        1000, ge=1, description="Streams whose state one encode / compress / OCR actor keeps at most; past it the "
        "least recently seen is evicted (as above). With the ViT token cache on, each costs about 14.5 MB in the "
        "encoder.")
    chunk_idle_s: float = Field(
        60.0, gt=0, description="Seconds a half-reassembled chunked segment may go without its next chunk, while its "
        "partition is being read, before it is dead-lettered as incomplete (its publisher stopped mid-segment). Time "
        "the source holds the partition paused for backpressure does not count.")
    retry_initial_s: float = Field(0.5, gt=0, description="First wait before retrying a segment whose dependency "
                                   "is away; doubled on each failure up to retry_max_s.")
    retry_max_s: float = Field(10.0, gt=0, description="Longest wait between retries of a waiting segment (and "
                               "between reconnects of a loop whose broker is away).")


class StagePlacement(Section):
    """What each actor of one stage asks Ray for (pipelines/ray/placement.py turns it into actor options)."""

    num_cpus: float | None = Field(
        None, ge=0, description="CPUs each actor holds. None: Ray's actor default (1 CPU to be placed, none held "
        "while it runs), which lets a dozen actors share a 2-core laptop. On a cluster set it, so that the "
        "autoscaler sees the demand and adds nodes.")
    num_gpus: float | None = Field(
        None, ge=0, description="GPUs each actor holds. None: 1 for encode, OCR and answer when their device is "
        "cuda, else none; decoders with decode.hardware=nvdec must be given their share (0.02, say). A fraction "
        "(0.5) packs two actors onto one GPU.")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources each actor asks for, e.g. "
        "{\"livelens_gpu_worker\": 0.01}: the actor is then placed only on nodes that declare them "
        "(ray_cluster.yaml, k8s/rayservice.yaml). The amount is a tag, not a budget: nodes declare 1000.")


class PlacementConfig(Section):
    """Ray resources per stage. The defaults ask for nothing custom, so one machine runs every stage; the
    `cluster` profile tags CPU stages for CPU worker nodes and encode / answer for GPU worker nodes."""

    source: StagePlacement = StagePlacement()
    decode: StagePlacement = StagePlacement()
    encode: StagePlacement = StagePlacement()
    compress: StagePlacement = StagePlacement()
    ocr: StagePlacement = StagePlacement()
    transcript: StagePlacement = StagePlacement()
    memory: StagePlacement = StagePlacement()
    standing: StagePlacement = StagePlacement()
    answer: StagePlacement = StagePlacement()
    query: StagePlacement = Field(StagePlacement(), description="The Kafka query consumer.")
    moderate: StagePlacement = Field(StagePlacement(), description="Moderation actors (when moderation.enabled).")
    verify: StagePlacement = Field(
        StagePlacement(), description="The moderation verifier; a VLM verifier runs the answer model on "
        "answer.device, so it gets a GPU like answer does.")


class BackfillConfig(Section):
    """`livelens backfill` and `livelens replay`: batch work beside live ingest (docs/operations.md)."""

    nice: int = Field(
        10, ge=0, le=19, description="CPU niceness of the backfill / replay process and its decode workers. Live "
        "actors run at 0, so where both compete for a core the kernel gives live ingest ~10x the CPU time "
        "(weights 1024 vs 110); an idle core still goes to the batch work. 0: no preference.")


class StreamsConfig(Section):
    """``streams.*``: managing streams (pause, resume, delete, purge; docs/operations.md)."""

    state_ttl_s: float = Field(
        1.0, gt=0, le=60, description="How long a source trusts the state it read for a stream before reading it "
        "again: a pause or delete reaches ingest within this.")
    purge_settle_s: float = Field(
        3.0, ge=0, description="A purge waits this long after stopping ingest (past state_ttl_s) before erasing, so "
        "segments already inside the DAG land first (a purge is idempotent: run it again if one took longer).")
    catch_up_workers: int = Field(1, ge=1, description="Decoder processes of a catch-up replay.")


class ClipConfig(Section):
    """``clips.*``: clip URLs on evidence and alerts, and the limits of one clip (docs/operations.md)."""

    margin_s: float = Field(
        2.0, ge=0, description="Evidence and alert clip URLs pad the evidence's span by this on each side, so the "
        "moment is seen with its lead-in.")
    max_span_s: float = Field(
        600.0, gt=0, description="Longest span one clip may cover. A clip is built in memory (its compressed "
        "video, ~1 MB per 10 s of 720p), so this bounds what one request holds.")
    read_timeout_s: float = Field(
        10.0, gt=0, description="A Kafka read that gets no record for this long answers 503 (retry later).")
    nice: int = Field(
        10, ge=0, le=19, description="CPU niceness of the threads that cut clips (`clip_threads`). Live actors run at "
        "0, so where a clip and ingest want the same core the kernel gives ingest ~10x the CPU time; 0: no "
        "preference.")
    locations_retention_s: float | None = Field(
        None, gt=0, description="How long (stream seconds) segment locations stay in Redis, ~0.7 kB per segment "
        "(1.3 MB per stream-hour of 2 s segments). None: max(memory.retention_s, archive.retention_s with an "
        "archive). Set it to the segments topic's retention.ms when that is shorter and there is no archive.")


class ArchiveConfig(Section):
    """``archive.*``: where segments are copied for clips older than Kafka's retention (docs/operations.md)."""

    url: str | None = Field(
        None, description="fsspec URL or local path of the archive; None: no archive, clips come from Kafka only.")
    retention_s: float = Field(
        30 * 86400.0, gt=0, description="Archived segments whose first frame is older than this (wall clock, "
        "against the stream's newest segment) are deleted; their clips then answer 410 once Kafka dropped them too.")
    storage_options: dict[str, str] = Field(
        default_factory=dict, description="Passed to the fsspec filesystem (credentials, endpoint_url, ...).")
