"""Event segments' tokens (the mid tier): what a frame adds to its event once redundant tokens are removed.

An event is the run of a stream's frames from one boundary to the next
(`operators.boundaries`). Its tokens are one Redis string of fixed-size records,
appended to as frames arrive (APPEND: a write costs the new records, not the
event so far):

    dt_ms  int32    the frame's pts minus the event's first pts, in milliseconds
    pos    int16    the token's position in the frame's grid (positions are kept, as everywhere)
    tok    float16  [D] the token

A frame's kept token is redundant when its cosine to the last token the event
kept at the same position is above ``MemoryConfig.mid_similarity``: within an
event the picture is one scene, so a position that drifted little since it was
last stored adds nothing. (The differential drop compared with the previous frame
only; slow drift passes it frame after frame, and is caught here.) The comparison
is with the last *kept* token, so what is stored is exactly a chain of changes
per position, and the reference is a function of the blob alone: a restarted
writer rebuilds it from the blob (`reference`), so the mid tier does not depend
on the writer's memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EPS = 1e-12


def record_dtype(token_dim: int) -> np.dtype:
    return np.dtype([("dt", "<i4"), ("pos", "<i2"), ("tok", "<f2", (token_dim,))])


@dataclass
class Reference:
    """The last token an event kept at each position (``have``: whether it kept one there yet)."""

    tokens: np.ndarray  # float32 [T, D]
    have: np.ndarray  # bool [T]
    blob_len: int  # bytes of the blob this reference is the state after

    @classmethod
    def empty(cls, positions: int, token_dim: int) -> Reference:
        return cls(np.zeros((positions, token_dim), np.float32), np.zeros(positions, bool), 0)

    @classmethod
    def from_blob(cls, blob: bytes, positions: int, token_dim: int) -> Reference:
        ref = cls.empty(positions, token_dim)
        records = np.frombuffer(blob, dtype=record_dtype(token_dim))
        # Later records overwrite earlier ones at the same position: fancy assignment keeps the last.
        ref.tokens[records["pos"]] = records["tok"].astype(np.float32)
        ref.have[records["pos"]] = True
        ref.blob_len = len(blob)
        return ref

    def copy(self) -> Reference:
        return Reference(self.tokens.copy(), self.have.copy(), self.blob_len)


def fold_frame(
    ref: Reference,
    dt_ms: int,
    positions: np.ndarray,
    tokens: np.ndarray,
    similarity: float,
) -> bytes:
    """Records of one frame's non-redundant tokens; updates ``ref`` (tokens, have, blob_len) in place."""
    tokens = np.asarray(tokens, dtype=np.float32)
    positions = np.asarray(positions, dtype=np.int64)
    if len(positions) == 0:
        return b""
    last = ref.tokens[positions]
    cos = np.einsum("kd,kd->k", tokens, last) / np.maximum(
        np.linalg.norm(tokens, axis=1) * np.linalg.norm(last, axis=1), _EPS
    )
    keep = ~ref.have[positions] | (cos <= similarity)
    records = np.zeros(int(keep.sum()), dtype=record_dtype(tokens.shape[1]))
    records["dt"] = dt_ms
    records["pos"] = positions[keep]
    records["tok"] = tokens[keep].astype(np.float16)
    # The reference holds what was stored (float16), so a rebuilt one compares exactly as this one does.
    ref.tokens[positions[keep]] = records["tok"].astype(np.float32)
    ref.have[positions[keep]] = True
    out = records.tobytes()
    ref.blob_len += len(out)
    return out


def read_blob(blob: bytes, token_dim: int) -> np.ndarray:
    """The records of an event's blob (fields dt, pos, tok)."""
    return np.frombuffer(blob, dtype=record_dtype(token_dim))
