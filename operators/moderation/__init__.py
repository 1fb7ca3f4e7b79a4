"""Moderation: screen every sampled frame cheaply, pool the evidence per room, verify the doubtful slowly.

    FrameBatch (+ FrameText) --detectors--> DetectorScore per frame --risk--> RiskDecision --verify--> Verdict
                                                                        ^                            |
                                                                        +------- apply(verdict) -----+

Plain classes, no Ray and no Kafka: ``policy`` (per-tenant rules), ``detectors`` (the fast path),
``risk`` (the per-room state machine), ``verify`` (the slow path).
"""
