"""The memory store's configuration section: tier budgets, merging, retention and the FAISS index."""

from __future__ import annotations

from pydantic import Field

from operators.config import Section


class MemoryConfig(Section):
    recent_frames: int = Field(
        600, ge=1, description="Frames per stream whose kept tokens stay in Redis (the short tier)."
    )
    snapshot_every_frames: int = Field(
        2000, ge=1, description="Index changes (entries added or removed) between FAISS snapshots.")
    shards: int = Field(1, ge=1, description="Memory actors; tenants are spread over them by hash.")
    # Tier budgets, per stream (memory_store/tiers/, docs/architecture.md "Memory tiers").
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
