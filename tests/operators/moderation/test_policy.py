"""Policy files: per-tenant overrides merged over the default; invalid thresholds refused."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from operators.moderation.policy import (
    ModerationConfig,
    ModerationPolicy,
    PolicyBook,
    RiskPolicy,
)

TOML = """
[default]
version = "2024-11-24"
[default.lexicon]
terms = [{term = "cocaine", severity = "RED"}, {term = "meet me offline", severity = "YELLOW", semantic = true}]
[default.nudity]
enabled = false
[tenants.kids.risk]
yellow_enter = 0.4
yellow_exit = 0.2
[tenants.kids]
version = "kids-3"
"""


def test_toml_and_json_load_with_tenant_overrides(tmp_path):
    (tmp_path / "p.toml").write_text(TOML)
    book = ModerationConfig(policy_file=tmp_path / "p.toml").policies()
    kids, other = book.policy_for("kids"), book.policy_for("acme")
    assert (kids.version, kids.risk.yellow_enter, kids.risk.red_enter) == ("kids-3", 0.4, 0.85)
    assert kids.lexicon.terms == other.lexicon.terms and not kids.nudity.enabled
    assert other.version == "2024-11-24" and other.risk == RiskPolicy()
    (tmp_path / "p.json").write_text(json.dumps({"default": {"version": "j1"}}))
    assert PolicyBook.load(tmp_path / "p.json").default.version == "j1"
    assert ModerationConfig().policies() == PolicyBook()


@pytest.mark.parametrize("raw, message", [
    ({"default": {"risk": {"yellow_enter": 0.2, "yellow_exit": 0.3}}}, "yellow_exit <= yellow_enter"),
    ({"default": {"lexicon": {"severity_scores": {"RED": 1.0, "YELLOW": 0.9}}}}, "below risk.red_enter"),
    ({"default": {"prompts": {"enabled": True}}}, "risky and one benign"),
    ({"default": {"risk": {"top_k": 0}}}, "greater than or equal"),
    ({"defaults": {}}, "unknown policy sections"),
])
def test_invalid_policies_are_refused(raw, message):
    with pytest.raises((ValidationError, ValueError), match=message):
        PolicyBook.from_dict(raw)


def test_policies_are_frozen():
    with pytest.raises(ValidationError):
        ModerationPolicy().risk.top_k = 3
