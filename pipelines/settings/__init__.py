"""The pipeline layer's own configuration sections, composed by `pipelines.config.LivelensConfig` with the
sections of the floors below (operators/config.py, memory_store/config.py, operators/moderation/policy.py):
connections (Kafka, Redis, Ray), serving (HTTP API, queries, webhooks, dashboard) and runtime (actors,
placement, metrics, backfill, streams, clips, archive)."""
