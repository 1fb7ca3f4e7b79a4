"""Every Grafana panel under deploy/grafana/ queries only what pipelines/metrics.py exports, in valid PromQL.

Metric names and labels come from `pipelines.metric_specs.REGISTRY` (not a list kept here); the PromQL
syntax is checked by the Prometheus package's own `promtool`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipelines.metric_specs import REGISTRY

DASHBOARDS = sorted((Path(__file__).resolve().parents[1] / "deploy" / "grafana").glob("*.json"))

# Series name -> labels a query may use on it (a histogram's _bucket also has `le`).
SERIES = {
    series: set(spec.labels) | ({"le"} if series.endswith("_bucket") else set())
    for spec in REGISTRY.values() for series in spec.series_names()
}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![\w.])([a-zA-Z_:][\w:]*)\b(?!\s*\()")


def parse(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """(metric name -> label names its selectors match on, label names of by/without/on/... clauses)."""
    text = _VARIABLE.sub("v", _STRING.sub('""', expr))
    selected: dict[str, set[str]] = {}
    for name, inner in _SELECTOR.findall(text):
        if not name:
            raise AssertionError(f"a selector without a metric name in {expr!r}")
        selected.setdefault(name, set()).update(_MATCHER.findall(inner))
    text = _SELECTOR.sub(lambda m: f" {m[1]} ", text)
    grouping = {label.strip() for _, labels in _GROUPING.findall(text) for label in labels.split(",") if label.strip()}
    text = re.sub(r"\[[^\]]*\]", " ", _GROUPING.sub(" ", text))
    text = re.sub(r"\boffset\s+\w+", " ", text)
    for name in _IDENT.findall(text):
        if name.lower() not in _KEYWORDS:
            selected.setdefault(name, set())
    return selected, grouping


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target (rows' nested panels too) and every query variable."""
    out = []
    panels = list(dashboard["panels"])
    while panels:
        panel = panels.pop()
        panels.extend(panel.get("panels", []))
        out += [(f"panel {panel['title']!r}", t["expr"]) for t in panel.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"]["query"])
            assert match, f"variable {var['name']}: only label_values(selector, label) queries are checked"
            out.append((f"variable {var['name']!r}", f"count by ({match[2]}) ({match[1]})"))
    return out


@pytest.mark.parametrize(
    ("expr", "names", "grouping"),
    [
        ("sum(rate(livelens_frames_out_total[5m]))", {"livelens_frames_out_total": set()}, set()),
        ('histogram_quantile(0.95, sum by (stage, le) (rate(livelens_stage_latency_seconds_bucket{stage!="x"}[5m])))',
         {"livelens_stage_latency_seconds_bucket": {"stage"}}, {"stage", "le"}),
        ('sum(a_total{tenant=~"$tenant", stream="a{b}"}) / on (tenant) group_left b offset 1h',
         {"a_total": {"tenant", "stream"}, "b": set()}, {"tenant"}),
        ("time() - max without (WorkerId) (x_seconds) > bool 60", {"x_seconds": set()}, {"WorkerId"}),
    ],
)
def test_parse_finds_metrics_and_labels(expr, names, grouping):
    assert parse(expr) == (names, grouping)


def test_there_are_the_four_dashboards():
    assert {p.stem for p in DASHBOARDS} == {"overview", "per_stream", "queries", "moderation"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_queries_only_exported_metrics(path: Path):
    dashboard = json.loads(path.read_text())
    found = queries(dashboard)
    assert len(found) >= 5, "a dashboard with almost no queries"
    for where, expr in found:
        selected, grouping = parse(expr)
        assert selected, f"{path.name} {where}: no metric in {expr!r}"
        for name, labels in selected.items():
            assert name in SERIES, f"{path.name} {where}: {name} is not exported by pipelines/metrics.py"
            assert labels <= SERIES[name], f"{path.name} {where}: {name} has no label(s) {labels - SERIES[name]}"
        known = set().union(*(SERIES[name] for name in selected))
        assert grouping <= known, f"{path.name} {where}: grouping by {grouping - known}, which no metric there has"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_is_importable(path: Path):
    """What Grafana needs to import it: a unique uid, the datasource variable every panel points at, ids."""
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"].startswith("livelens-") and dashboard["title"].startswith("livelens / ")
    assert any(v["name"] == "datasource" and v["type"] == "datasource" for v in dashboard["templating"]["list"])
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_query_is_valid_promql(tmp_path: Path):
    promtool = shutil.which("promtool")
    if promtool is None:
        raise FileNotFoundError("promtool not found; `make setup` installs it (Debian package prometheus)")
    exprs = [expr for path in DASHBOARDS for _, expr in queries(json.loads(path.read_text()))]
    # Recording rules are the one place promtool parses arbitrary PromQL offline. JSON is YAML.
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"livelens:dashboard_check:{i}", "expr": expr} for i, expr in enumerate(exprs)]}]}
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps(rules))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(exprs)} rules found" in result.stdout
