"""The Prometheus server's scrape config for livelens: Ray's metrics export ports, livelens names restored.

Ray serves every application metric under its exporter's ``ray_`` namespace; the relabelling here stores
them under the names defined in pipelines/metric_specs.py, which the Grafana dashboards under deploy/grafana/
query.
"""

from __future__ import annotations

from typing import Any

# Ray's exporter namespace: it serves every application metric as f"{RAY_PREFIX}{name}".
RAY_PREFIX = "ray_"


def scrape_config(targets: list[str], *, interval_s: float = 15.0, job: str = "livelens") -> dict[str, Any]:
    """A Prometheus scrape config (write it as YAML, or as JSON: Prometheus reads both) for Ray metrics
    export ports, storing livelens metrics under their own names (without Ray's ``ray_`` prefix)."""
    return {
        "global": {"scrape_interval": f"{interval_s:g}s", "evaluation_interval": f"{interval_s:g}s"},
        "scrape_configs": [{
            "job_name": job,
            "static_configs": [{"targets": targets}],
            "metric_relabel_configs": [{
                "source_labels": ["__name__"], "regex": f"{RAY_PREFIX}(livelens_.*)",
                "target_label": "__name__", "replacement": "$1", "action": "replace",
            }],
        }],
    }
