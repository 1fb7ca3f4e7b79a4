"""Detectors on real frames and rendered text; SafeDetector on failures and timeouts."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import av
import numpy as np
import pytest

from operators.config import EncodeConfig, OcrConfig
from operators.encode import VisionEncoder
from operators.moderation.detectors import (
    NUDENET_CLASSES,
    DetectorScore,
    LexiconDetector,
    NudityDetector,
    PromptSimilarityDetector,
    SafeDetector,
)
from operators.moderation.policy import NudityPolicy, PromptLabel, PromptPolicy
from operators.moderation.risk import RiskEngine
from operators.ocr import ScreenTextReader
from tests.conftest import REPO_ROOT
from tests.operators.moderation.rooms import (
    batch,
    frame,
    policy_book,
    text_batches,
    texts,
)

REAL_VIDEO = Path(os.environ.get("LIVELENS_SHARED_DIR", REPO_ROOT.parent / "shared")) / "data/real-video"


def decoded(name: str, every: int, count: int) -> np.ndarray:
    images = []
    with av.open(str(REAL_VIDEO / name)) as container:
        for i, f in enumerate(container.decode(video=0)):
            if i % every == 0:
                images.append(f.to_ndarray(format="rgb24"))
            if len(images) == count:
                break
    return np.stack(images)


def test_nudity_scores_real_benign_frames_low():
    images = decoded("car-detection.mp4", 25, 12)
    scores = NudityDetector(NudityPolicy(), batch_frames=5).score(batch(list(images), 0.0), None)
    assert [s.pts_s for s in scores] == list(range(12))
    assert all(s.score < 0.3 and s.labels == () for s in scores)


def test_nudity_preprocessing_matches_nudenet():
    """With every class counted, labels, scores and boxes agree with nudenet's own detect()."""
    nudenet = pytest.importorskip("nudenet")
    images = decoded("one-by-one-person-detection.mp4", 60, 6)
    ours = NudityDetector(NudityPolicy(classes=NUDENET_CLASSES, min_confidence=0.3)).score(batch(list(images), 0.0), None)
    reference = nudenet.NudeDetector()
    found = 0
    for score, image in zip(ours, images):
        theirs = [d for d in reference.detect(np.ascontiguousarray(image[..., ::-1])) if d["score"] >= 0.3]
        best = {}
        for d in theirs:
            if d["score"] > best.get(d["class"], {"score": 0})["score"]:
                best[d["class"]] = d
        assert sorted(score.labels) == sorted(best)
        for label, box in zip(score.labels, score.boxes):
            x, y, w, h = best[label]["box"]
            height, width = image.shape[:2]
            assert np.allclose(box, (x / width, y / height, (x + w) / width, (y + h) / height), atol=0.02)
            found += 1
    assert found >= 2  # the clip shows people: the comparison compared something


@pytest.mark.parametrize("text, labels, severity", [
    ("CALL 555-0142 NOW", ("phone_number",), "YELLOW"),
    ("TEXT ME +1 (415) 555 0142", ("phone_number",), "YELLOW"),
    ("TIPS: paypal.me/streamer99", ("payment_handle",), "RED"),
    ("VENMO @dana-live", ("payment_handle",), "RED"),
    ("send to $DanaLive", ("payment_handle",), "RED"),
    ("BEST COCAINE IN TOWN", ("term:cocaine",), "RED"),
    ("C0CAINE DEALS", ("term~cocaine",), "RED"),
    ("MY ONLYFANS", ("term:onlyfans",), "YELLOW"),
    ("PLEASE SEND MONEY TO ME", ("semantic:send me money",), "YELLOW"),
    ("send me money", ("term:send me money", "semantic:send me money"), "RED"),
    ("$AAPL CLOSES AT 191.20", (), None),
    ("DOW 38,123.45 UP 2%", (), None),
    ("SCORE 3-1 AFTER 90 MIN, 2024-11-24 9:30", (), None),
    ("MONEY MARKETS CLOSE HIGHER", (), None),
    ("COCOA PRICES SOAR", (), None),
])
def test_lexicon(embedder, text, labels, severity):
    detector = LexiconDetector(policy_book().default.lexicon, embedder)
    ((frames, chunk),) = text_batches(texts(1, [])[:1])
    chunk[0].lines[0] = type(chunk[0].lines[0])(text, 0.9, chunk[0].lines[0].box)
    (score,) = detector.score(frames, chunk)
    assert (score.labels, score.severity) == (labels, severity)
    assert score.score == {None: 0.0, "YELLOW": 0.6, "RED": 1.0}[severity]


def test_lexicon_on_real_ocr_alerts_within_3s():
    """Rendered frames through the real OCR reader: two RED events, each alerted on its first frame."""
    reader = ScreenTextReader(OcrConfig())
    lexicon = LexiconDetector(policy_book().default.lexicon.model_copy(update={"terms": policy_book().default.lexicon.terms[:2], "phone_numbers": "RED"}))
    engine = RiskEngine(policy_book(window_s=4, min_dwell_s=2))
    shown = ["EVENING NEWS WITH DANA"] * 3 + ["CALL 555-0142 NOW"] * 3 + ["EVENING NEWS WITH DANA"] * 8 + \
            ["BEST COCAINE IN TOWN"] * 3 + ["EVENING NEWS WITH DANA"] * 2
    decisions = []
    for start in range(0, len(shown), 2):
        frames = batch([frame(h) for h in shown[start : start + 2]], float(start))
        decisions += engine.observe(frames.segment, lexicon.score(frames, reader.read(frames)))
    alerts = [d for d in decisions if d.event == "alert"]
    assert [(a.state, a.pts_s, a.drivers[0].labels) for a in alerts] == [
        ("RED", 3.0, ("phone_number",)), ("RED", 14.0, ("term:cocaine",))]
    assert [e.frame_key for e in alerts[1].evidence] == ["t1/room-1/14/14000"]
    # Read incrementally (the banner changed, the sky did not), with the words a whole read gives.
    assert alerts[1].evidence[0].text == "BEST COCAINE IN TOWN"
    assert reader.stats.regions > 0


def test_prompt_similarity_with_tiny_clip(tiny_models):
    encoder = VisionEncoder(EncodeConfig(), tiny_models["clip"])
    policy = PromptPolicy(enabled=True, risky=(PromptLabel(label="weapon", prompt="a photo of a gun"),))
    detector = PromptSimilarityDetector(policy, encoder.embed_images, encoder.embed_text)
    frames = batch([frame("EVENING NEWS"), frame(None), frame("MARKETS")], 0.0)
    scores = detector.score(frames, None)
    assert [s.pts_s for s in scores] == [0.0, 1.0, 2.0]
    assert all(0.0 <= s.score <= 1.0 and s.labels == ("weapon",) for s in scores)
    again = detector.score_embeddings(frames.pts_s, encoder.embed_images(frames.images))
    assert [s.score for s in again] == pytest.approx([s.score for s in scores], abs=1e-5)


class Stuck:
    """A detector that blocks until released."""

    name = "stuck"

    def __init__(self):
        self.release = threading.Event()

    def score(self, frames, texts):
        self.release.wait(5)
        return [DetectorScore(self.name, float(t), 0.0) for t in frames.pts_s]


class Broken:
    name = "broken"

    def score(self, frames, texts):
        return [DetectorScore(self.name, 0.0, 1.5)]  # wrong length and out of range


def test_safe_detector_timeout_then_busy_then_recovers():
    stuck = Stuck()
    safe = SafeDetector(stuck, timeout_s=0.05)
    frames = batch([frame(None)] * 2, 0.0)
    first = safe.score(frames, None)
    assert [s.score for s in first] == [None, None] and "timeout" in first[0].error
    second = safe.score(batch([frame(None)] * 2, 2.0), None)
    assert [s.score for s in second] == [None, None] and second[0].error.startswith("busy")
    stuck.release.set()
    safe._running.result(timeout=5)
    assert [s.score for s in safe.score(batch([frame(None)], 4.0), None)] == [0.0]
    assert (safe.health.batches, safe.health.timeouts, safe.health.skipped_busy) == (3, 1, 1)
    safe.close()


def test_safe_detector_rejects_malformed_output():
    safe = SafeDetector(Broken(), timeout_s=1)
    scores = safe.score(batch([frame(None)] * 2, 0.0), None)
    assert [s.score for s in scores] == [None, None] and safe.health.failures == 1
    assert "2 frames" in safe.health.last_error


def test_lexicon_reads_what_was_said_and_names_the_source(embedder):
    from operators.transcript import TranscriptLine

    detector = LexiconDetector(policy_book().default.lexicon, embedder)
    lines = [TranscriptLine(3.0, 4.5, "best cocaine in town", "asr", confidence=0.7),
             TranscriptLine(5.0, 6.0, "call five five five now", "caption"),
             TranscriptLine(7.0, 8.0, "send to paypal.me/streamer99", "subtitle")]
    scores = detector.score_lines(lines)
    assert [(s.detector, s.pts_s, s.labels, s.severity) for s in scores] == [
        ("lexicon:asr", 3.0, ("term:cocaine",), "RED"), ("lexicon:subtitle", 7.0, ("payment_handle",), "RED")]
    assert scores[0].text == "best cocaine in town"
