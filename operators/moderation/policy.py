"""Moderation policies: what each tenant screens for, how hard, and what happens at each level.

A policy file (TOML or JSON) holds a ``default`` policy and optional per-tenant overrides, which are
merged over the default key by key, so a tenant lists only what it changes:

    [default]
    version = "2024-11-24"
    [default.lexicon]
    terms = [{term = "cocaine", severity = "RED"}, {term = "meet me offline", severity = "YELLOW", semantic = true}]
    [tenants.kids-channel.risk]
    yellow_enter = 0.4

Every decision carries the ``version`` of the policy that produced it, so a reviewer can tell which
rules were in force.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Severity = Literal["RED", "YELLOW"]
RiskState = Literal["GREEN", "YELLOW", "RED"]

# nudenet 3.4's classes that show what a live room must not broadcast. Covered parts, faces, feet,
# bellies, armpits and male chests are ordinary on camera and only add false alarms.
EXPOSED_CLASSES = (
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "BUTTOCKS_EXPOSED",
    "ANUS_EXPOSED",
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NudityPolicy(_Frozen):
    enabled: bool = True
    classes: tuple[str, ...] = Field(EXPOSED_CLASSES, description="nudenet classes that count as exposure.")
    min_confidence: float = Field(
        0.3, ge=0.0, le=1.0,
        description="Detections less sure than this are ignored (score 0). Lower catches partly hidden or small "
        "exposure and alarms more on skin-coloured scenes; the room's top-k pooling already damps one-frame noise.",
    )


class LexiconTerm(_Frozen):
    term: str = Field(min_length=1)
    severity: Severity
    semantic: bool = Field(
        False, description="Also match lines that mean the same (MiniLM cosine), not only lines that spell it. "
        "For phrases a speaker rewords ('meet me offline'), not for single words.",
    )


class LexiconPolicy(_Frozen):
    enabled: bool = True
    terms: tuple[LexiconTerm, ...] = ()
    phone_numbers: Severity | None = Field(
        "YELLOW", description="Severity of a phone number on screen (off-platform contact); None: not screened.")
    payment_handles: Severity | None = Field(
        "RED", description="Severity of a payment handle on screen ($cashtag, paypal.me/..., venmo, cash app): "
        "soliciting money off-platform; None: not screened.",
    )
    fuzzy_ratio: float = Field(
        0.85, ge=0.0, le=1.0,
        description="difflib ratio at which a run of words counts as a term misspelt or misread by OCR. Lower "
        "catches more evasions ('c0caine') and more innocent neighbours.",
    )
    min_fuzzy_chars: int = Field(
        5, ge=1, description="Shorter terms match exactly only: a four-letter word has too many near neighbours.")
    semantic_threshold: float = Field(
        0.6, ge=-1.0, le=1.0,
        description="MiniLM cosine between a line and a semantic term at which they count as saying the same. "
        "Lower catches looser paraphrases and more unrelated lines. For 'send me money': 'PLEASE SEND MONEY TO "
        "ME' 0.85, 'TRANSFER ME CASH NOW' 0.64, 'SEND US YOUR PHOTOS' 0.50, 'MONEY MARKETS CLOSE HIGHER' 0.22.",
    )
    severity_scores: dict[Severity, float] = Field(
        {"RED": 1.0, "YELLOW": 0.6},
        description="Frame score of a hit of each severity. YELLOW must stay below risk.red_enter, or YELLOW "
        "terms alone would turn a room RED.",
    )


class PromptLabel(_Frozen):
    label: str = Field(min_length=1)
    prompt: str = Field(min_length=1)


class PromptPolicy(_Frozen):
    """Zero-shot screening with a dual encoder: a frame is scored by how much more it looks like a risky
    prompt than like any benign one (softmax over all prompts)."""

    enabled: bool = False
    risky: tuple[PromptLabel, ...] = ()
    benign: tuple[str, ...] = ("a photo of people talking", "a screenshot of a video game", "a photo of a room")
    temperature: float = Field(
        0.01, gt=0.0, description="Softmax temperature over cosines; 0.01 is CLIP's trained logit scale of 100.")

    @model_validator(mode="after")
    def _needs_prompts(self) -> PromptPolicy:
        if self.enabled and (not self.risky or not self.benign):
            raise ValueError("prompt screening needs at least one risky and one benign prompt")
        return self


class RiskPolicy(_Frozen):
    """How frame scores become a room's state. Scores are pooled per detector: the best frame of each
    ``slot_s`` time slot, then the mean of the ``top_k`` best slots in the last ``window_s``."""

    slot_s: float = Field(1.0, gt=0.0, description="Time slot length; one instance of the room's bag of evidence.")
    window_s: float = Field(30.0, gt=0.0, description="How far back evidence counts. Longer remembers an episode "
                            "longer and ends it later.")
    top_k: int = Field(2, ge=1, description="Slots averaged. 1: one bad slot is the room's score; 2: one bad slot "
                       "counts half, so a single misfiring frame cannot raise an alert on its own.")
    yellow_enter: float = Field(0.5, ge=0.0, le=1.0)
    yellow_exit: float = Field(0.3, ge=0.0, le=1.0)
    red_enter: float = Field(0.85, ge=0.0, le=1.0)
    red_exit: float = Field(0.6, ge=0.0, le=1.0)
    min_dwell_s: float = Field(10.0, ge=0.0, description="Stream seconds a room stays in a state before it may go "
                               "down a level; going up is never delayed.")
    reverify_s: float = Field(10.0, gt=0.0, description="While YELLOW and not cleared, verification is asked again "
                              "this often, with the evidence gathered since.")
    verdict_hold_s: float = Field(300.0, ge=0.0, description="After a verifier clears a room, the (detector, label) "
                                  "pairs it cleared are ignored this long, so the same benign sight does not "
                                  "re-alert every few seconds.")
    max_evidence: int = Field(5, ge=1, description="Evidence frames attached to a decision.")

    @model_validator(mode="after")
    def _hysteresis(self) -> RiskPolicy:
        if not (self.yellow_exit <= self.yellow_enter <= self.red_enter and self.red_exit <= self.red_enter):
            raise ValueError("need yellow_exit <= yellow_enter <= red_enter and red_exit <= red_enter")
        if self.window_s < self.slot_s:
            raise ValueError("window_s must hold at least one slot")
        return self


class VerifyPolicy(_Frozen):
    min_frames: int = Field(3, ge=1, description="RuleVerifier: frames a detector must have hit in the window "
                            "to confirm on persistence alone.")
    min_detectors: int = Field(2, ge=2, description="RuleVerifier: detectors that must agree to confirm at once.")
    question: str = Field(
        "Do these frames show content a live stream must not broadcast (nudity, illegal goods, soliciting "
        "payment or contact off the platform)? Answer yes or no.",
        description="What VlmVerifier asks; the answer must start with yes or no.",
    )


class ModerationPolicy(_Frozen):
    version: str = Field("builtin-1", min_length=1)
    nudity: NudityPolicy = NudityPolicy()
    lexicon: LexiconPolicy = LexiconPolicy()
    prompts: PromptPolicy = PromptPolicy()
    risk: RiskPolicy = RiskPolicy()
    verify: VerifyPolicy = VerifyPolicy()
    actions: dict[RiskState, tuple[str, ...]] = Field(
        {"GREEN": (), "YELLOW": ("verify", "notify_moderators"), "RED": ("notify_moderators", "pause_stream")},
        description="What the platform does on entering each state; carried in every decision, executed by the "
        "caller.",
    )

    @model_validator(mode="after")
    def _yellow_below_red(self) -> ModerationPolicy:
        if self.lexicon.severity_scores.get("YELLOW", 0.0) >= self.risk.red_enter:
            raise ValueError("lexicon YELLOW score must stay below risk.red_enter")
        return self


class PolicyBook(_Frozen):
    """The policies of every tenant: ``default`` unless ``tenants`` has an entry."""

    default: ModerationPolicy = ModerationPolicy()
    tenants: dict[str, ModerationPolicy] = {}

    def policy_for(self, tenant_id: str) -> ModerationPolicy:
        return self.tenants.get(tenant_id, self.default)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PolicyBook:
        """Tenant sections are merged over the default section before validation."""
        unknown = set(raw) - {"default", "tenants"}
        if unknown:
            raise ValueError(f"unknown policy sections: {sorted(unknown)}")
        default = raw.get("default", {})
        tenants = {name: _merged(default, override) for name, override in raw.get("tenants", {}).items()}
        return cls(default=ModerationPolicy.model_validate(default),
                   tenants={name: ModerationPolicy.model_validate(p) for name, p in tenants.items()})

    @classmethod
    def load(cls, path: str | Path) -> PolicyBook:
        """Read a ``.toml`` or ``.json`` policy file."""
        path = Path(path)
        if path.suffix == ".toml":
            raw = tomllib.loads(path.read_text())
        elif path.suffix == ".json":
            raw = json.loads(path.read_text())
        else:
            raise ValueError(f"{path}: policy files are .toml or .json")
        return cls.from_dict(raw)


class ModerationConfig(_Frozen):
    """The ``moderation`` section of the livelens configuration (env ``LIVELENS_MODERATION__<FIELD>``)."""

    enabled: bool = Field(False, description="Run moderation on every stream.")
    policy_file: Path | None = Field(None, description="TOML or JSON PolicyBook; None: the built-in default policy.")
    detector_timeout_s: float = Field(
        2.0, gt=0.0, description="A detector that takes longer on a batch is marked unknown for its frames (and "
        "skips batches until it returns), so one stuck model never holds the room's decisions back.",
    )
    nudity_batch_frames: int = Field(8, ge=1, description="Frames per nudity model run.")
    moderators: int = Field(1, ge=1, description="Moderation actors; rooms (streams) are spread over them by hash, "
                            "each room's risk state lives on one.")
    verifier: str = Field(
        "auto", min_length=1,
        description="The slow path for YELLOW rooms. rules: RuleVerifier; vlm: VlmVerifier over the answer model "
        "(answer.model must be set); auto: vlm when answer.model is set, else rules; or 'module:attr', a factory "
        "(PolicyBook, LivelensConfig) -> Verifier for a verifier of your own.",
    )

    def policies(self) -> PolicyBook:
        return PolicyBook() if self.policy_file is None else PolicyBook.load(self.policy_file)


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def normalise(text: str) -> str:
    """Case-folded, whitespace collapsed: how terms and recognised text are compared."""
    return re.sub(r"\s+", " ", text.casefold()).strip()
