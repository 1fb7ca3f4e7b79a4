"""livelens pipelines: configuration, Kafka contracts, the Ray DAG, the query service and the CLI."""
