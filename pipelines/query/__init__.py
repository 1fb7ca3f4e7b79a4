"""Queries: the retrieval engine and its ranking rules, the Kafka query consumer, standing queries."""
