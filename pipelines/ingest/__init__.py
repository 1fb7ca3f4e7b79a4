"""Ingest: the Kafka source loop and the batch paths beside live ingest (backfill, replay)."""
