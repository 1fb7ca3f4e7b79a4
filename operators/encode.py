"""Encode sampled frames into visual tokens (what memory stores) and one index embedding per frame.

Any Hugging Face vision checkpoint loads through ``AutoModel.from_pretrained``;
what it produces depends on which of three kinds it is:

dual   (CLIP, SigLIP: get_image_features + get_text_features)
       tokens: the vision tower's patch tokens (CLS and other prefix tokens dropped).
       embedding: the projected image features, in the text tower's space, so a
       text query searches frames directly (``embed_text``).
vlm    (LLaVA: vision tower + multi_modal_projector + language model)
       tokens: vision tower + projector output, i.e. the answer model's own input
       embeddings for the image, so stored tokens can be fed to it unchanged.
       embedding: mean of those tokens; there is no text tower to query with.
       The language model is dropped after loading: the encoder never runs it.
plain  (ViT, DINOv2: a vision model with last_hidden_state)
       tokens: patch tokens. embedding: the model's pooled output, else the
       token mean; image-to-image search only.

Cost per frame, before token drop (T tokens of D dims; tokens stored as float16;
vision FLOPs ~ 2 * params * T + 4 * layers * T^2 * width):
    tiny CLIP (offline profile)      T=64,  D=64:    8 KB,  ~10 MFLOPs
    CLIP ViT-B/32 @224               T=49,  D=768:  75 KB,  ~9 GFLOPs
    SigLIP base p16 @224 (gpu)       T=196, D=768: 301 KB,  ~36 GFLOPs
    DINOv2 base p14 @224             T=256, D=768: 393 KB,  ~45 GFLOPs
    LLaVA-1.5 (ViT-L/14 @336 + MLP)  T=576, D=4096: 4.7 MB, ~380 GFLOPs tower + ~24 GFLOPs projector
The VLM kind stores ~15x the bytes of a dual encoder per frame: token drop
(operators.compress) matters most there.

Frames are resized whole to the model's input size, never centre-cropped:
on-screen text and objects at the edges must reach memory. Resizing and
normalising run on the encoder's device, one call per input batch: in torch, or in
one Triton kernel reading the uint8 frames once (``encode.preprocess``, operators/triton_frames.py).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoTokenizer,
    PreTrainedModel,
)

from operators.config import EncodeConfig, ViTCacheConfig
from operators.frames import FeatureBatch, FrameBatch, StageError
from operators.tiny_models import is_tiny
from operators.vit_cache import CachedViT

logger = logging.getLogger(__name__)

Kind = Literal["dual", "vlm", "plain"]

# SigLIP's text tower pools the last position and was trained on text padded to its full
# length; shorter padding gives different (wrong) text embeddings. CLIP pools the EOS token.
_PAD_TEXT_TO_MAX_LENGTH = {"siglip"}


@dataclass
class EncodeStats:
    """Per stream: frames through the ViT, token rows recomputed (in whole frames; equals ``frames`` without
    the token cache) and the encoder seconds spent on them (a shared pass is split by frame count)."""

    frames: int = 0
    token_rows: float = 0.0
    seconds: float = 0.0

    @property
    def token_fraction(self) -> float:
        return self.token_rows / self.frames if self.frames else 1.0


class UnsupportedModel(ValueError):
    """A checkpoint that is none of the three kinds, or whose vision tower cannot run on a fixed-size frame."""


class VisionEncoder:
    """Batched frame encoder over one Hugging Face vision model.

    Frames of many segments (many streams) share forward passes of at most
    ``config.batch_frames`` frames; outputs are split back per segment.

    With ``token_cache``, frames of streams go through ``CachedViT`` (operators.vit_cache): each stream's
    non-reference frames recompute only their least similar tokens. Query-side calls (``embed_images``)
    always compute in full and leave the streams' caches alone.
    """

    def __init__(self, config: EncodeConfig, model: str | Path, *, token_cache: ViTCacheConfig | None = None):
        self.config = config
        self.model_name = str(model)
        self._device = torch.device(config.device)
        self._dtype: torch.dtype = getattr(torch, config.dtype)

        hf_config = AutoConfig.from_pretrained(model)
        try:
            net = AutoModel.from_pretrained(model, dtype=self._dtype, attn_implementation=config.attention)
        except ValueError as exc:
            raise UnsupportedModel(f"{model}: AutoModel cannot load {hf_config.architectures}: {exc}") from exc
        self.kind: Kind = _kind_of(net)
        if self.kind == "vlm":
            # Frees the bulk of a VLM (a 7B language model next to a 0.3B tower) for the actor's lifetime.
            del net.language_model
        self._net = net.to(self._device).eval()
        self._tower = self._forward
        if config.compile:
            if self._device.type != "cuda":
                raise ValueError("encode.compile is for cuda: on the CPU the compiled tower is not measured to pay")
            # Compiled for the first batch size seen; a second size recompiles once with a dynamic batch
            # dimension, which then serves every partial batch (torch.compile's automatic dynamic shapes).
            self._tower = torch.compile(self._forward)
        # Built before the probe on purpose: the probe runs outside it (no stream), and a fallback is logged now.
        self._cache = CachedViT(self._net, token_cache) if token_cache is not None else None
        self._stats: dict[Hashable, EncodeStats] = {}

        processor = AutoImageProcessor.from_pretrained(model, backend="pil")
        self._input_hw = _input_size(processor)
        mean, std, scale = _normalisation(processor)
        self._mean = torch.tensor(mean, device=self._device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, device=self._device).view(1, 3, 1, 1)
        self._scale = scale
        # Imported here: the triton package comes with torch's CUDA wheels only, and the torch path needs none.
        self.frame_passes = None
        if config.preprocess == "triton":  # on cuda: EncodeConfig refuses it elsewhere
            try:
                from operators.triton_frames import FramePasses
            except ImportError as exc:
                raise ValueError(f"encode.preprocess='triton' needs the triton package, which torch's CUDA wheels "
                                 f"bring ({exc}); or set encode.preprocess='torch'") from exc
            self.frame_passes = FramePasses(self._device)

        vision_config = getattr(hf_config, "vision_config", hf_config)
        patch = vision_config.patch_size
        self._patch_grid = (self._input_hw[0] // patch, self._input_hw[1] // patch)
        self._prefix = 0  # set by the probe: CLS / register tokens ahead of the patches
        self._tokenizer = None
        if self.kind == "dual":
            self._tokenizer = AutoTokenizer.from_pretrained(model)
            self._text_max_length = min(self._tokenizer.model_max_length,
                                        hf_config.text_config.max_position_embeddings)
            self._pad_to_max = hf_config.model_type in _PAD_TEXT_TO_MAX_LENGTH

        tokens, embedding = self._probe()
        self.tokens_per_frame, self.token_dim = tokens.shape[1], tokens.shape[2]
        self.embedding_dim = embedding.shape[1]
        rows, cols = self._patch_grid
        self.grid = (rows, cols) if rows * cols == self.tokens_per_frame else (1, self.tokens_per_frame)
        logger.warning(
            "VisionEncoder: %s is a %s model (%s): %d tokens x %d per frame, grid %s, embedding %d%s, "
            "input %dx%d, %s/%s%s",
            self.model_name, self.kind.upper(), type(net).__name__, self.tokens_per_frame, self.token_dim,
            self.grid, self.embedding_dim, " (text-aligned)" if self.has_text_tower else " (image-only)",
            *self._input_hw, config.device, config.dtype,
            "; RANDOM WEIGHTS: a tiny test model, its features mean nothing" if is_tiny(model) else "",
        )

    @property
    def has_text_tower(self) -> bool:
        return self.kind == "dual"

    @property
    def uses_token_cache(self) -> bool:
        return self._cache is not None

    @torch.inference_mode()
    def encode(self, batches: Sequence[FrameBatch]) -> list[FeatureBatch]:
        """Features for each batch, computed in shared forward passes; thumbnails and pts carried over."""
        streams = [(b.segment.tenant_id, b.segment.stream_id) for b in batches]
        tokens, embedding = self._run([b.images for b in batches], streams)
        bounds = np.cumsum([len(b) for b in batches])[:-1]
        return [
            FeatureBatch(b.segment, b.pts_s, t, e, self.grid, list(b.thumbnails))
            for b, t, e in zip(batches, np.split(tokens, bounds), np.split(embedding, bounds))
        ]

    @torch.inference_mode()
    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """Index embeddings [N,E] of RGB uint8 images [N,H,W,3] (example-image queries): the frames' path."""
        return self.encode_images(images)[1]

    @torch.inference_mode()
    def encode_images(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(tokens [N,T,D] float16, embeddings [N,E]) of RGB uint8 images outside any stream: a query's
        example image, in the same spaces as stored frames' tokens and embeddings."""
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 [N,H,W,3], got {images.dtype} {images.shape}")
        return self._run([images])

    @torch.inference_mode()
    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Text embeddings [n,E] in the frames' embedding space; dual encoders only."""
        if self._tokenizer is None:
            raise StageError("no_text_tower", f"{self.model_name} is a {self.kind} model: it cannot embed text; "
                             "query with an example image or use a dual encoder (CLIP, SigLIP)")
        if not texts:
            return np.zeros((0, self.embedding_dim), np.float32)
        encoded = self._tokenizer(list(texts), padding="max_length" if self._pad_to_max else True, truncation=True,
                                  max_length=self._text_max_length, return_token_type_ids=False, return_tensors="pt")
        out = self._net.get_text_features(**encoded.to(self._device))
        return F.normalize(out.pooler_output.float(), dim=-1).cpu().numpy()

    def stats(self) -> dict[Hashable, EncodeStats]:
        """Per (tenant, stream): what the encoder computed for it so far."""
        return dict(self._stats)

    def forget(self, stream: Hashable) -> None:
        """Drop a stream's cached tokens and stats (it ended); its next frame is computed in full."""
        self._stats.pop(stream, None)
        if self._cache is not None:
            self._cache.forget(stream)

    def _run(self, image_arrays: Sequence[np.ndarray],
             streams: Sequence[Hashable] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Tokens [N,T,D] float16 and embeddings [N,E] float32 of all images, in chunks of batch_frames.
        ``streams[i]`` names the stream of ``image_arrays[i]``: the token cache and the stats follow it."""
        tokens: list[np.ndarray] = []
        embeddings: list[np.ndarray] = []
        pieces: list[tuple[np.ndarray, Hashable | None]] = []
        filled = 0
        for i, images in enumerate(image_arrays):
            start = 0
            while start < len(images):
                take = min(self.config.batch_frames - filled, len(images) - start)
                pieces.append((images[start : start + take], streams[i] if streams is not None else None))
                filled += take
                start += take
                if filled == self.config.batch_frames:
                    self._forward_into(pieces, tokens, embeddings)
                    pieces, filled = [], 0
        if pieces:
            self._forward_into(pieces, tokens, embeddings)
        if not tokens:
            return (np.zeros((0, self.tokens_per_frame, self.token_dim), np.float16),
                    np.zeros((0, self.embedding_dim), np.float32))
        return np.concatenate(tokens), np.concatenate(embeddings)

    def _forward_into(self, pieces: list[tuple[np.ndarray, Hashable | None]], tokens: list[np.ndarray],
                      embeddings: list[np.ndarray]) -> None:
        started = time.perf_counter()
        # One resize per piece: frames of one segment share a size, other segments may not.
        pixels = torch.cat([self._preprocess(p) for p, _ in pieces])
        rows = [stream for p, stream in pieces for _ in range(len(p))]
        if self._cache is not None and rows[0] is not None:
            (t, e), cached = self._cache(pixels, rows, forward=self._forward)
            by_stream = cached.by_stream
        else:
            t, e = self._tower(pixels)
            by_stream = {s: (n, float(n)) for s, n in Counter(rows).items()}
        tokens.append(t.to(torch.float16).cpu().numpy())
        embeddings.append(F.normalize(e.float(), dim=-1).cpu().numpy())
        if rows[0] is None:
            return
        per_frame = (time.perf_counter() - started) / len(rows)
        for stream, (frames, token_rows) in by_stream.items():
            stats = self._stats.setdefault(stream, EncodeStats())
            stats.frames += frames
            stats.token_rows += token_rows
            stats.seconds += frames * per_frame

    def features_on_device(self, frames: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [N,T,D] in the model's dtype, L2-normalised embeddings [N,E] float32), left on the device, of
        uint8 frames [n,H,W,3] already there (one tensor per size): the path of operators/encode_compress.py.
        Full compute: the token cache's per-stream state is not kept on this path."""
        pixels = torch.cat([self._normalise_frames(f) for f in frames])
        tokens, embedding = self._tower(pixels)
        return tokens, F.normalize(embedding.float(), dim=-1)

    def _preprocess(self, images: np.ndarray) -> torch.Tensor:
        """uint8 [N,H,W,3] -> normalised [N,3,h,w] at the model's input size, whole frame (no crop)."""
        return self._normalise_frames(torch.from_numpy(_writable(images)).to(self._device))

    def _normalise_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [N,H,W,3] on the device -> normalised [N,3,h,w] at the model's input size."""
        if self.frame_passes is not None:
            return self.frame_passes.resize_normalise(frames, self._input_hw, self._scale, self._mean, self._std,
                                                      self._dtype)
        x = frames.permute(0, 3, 1, 2).float()
        # Antialiased: frames are usually 3-7x larger than the model input; plain bilinear would alias.
        x = F.interpolate(x, size=self._input_hw, mode="bilinear", antialias=True, align_corners=False)
        return ((x * self._scale - self._mean) / self._std).to(self._dtype)

    def _forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [N,T,D], unnormalised embeddings [N,E]) for one chunk."""
        if self.kind == "vlm":
            features = self._net.get_image_features(pixel_values=pixels).pooler_output
            tokens = torch.stack(list(features)) if isinstance(features, (list, tuple)) else features
            return tokens, tokens.float().mean(dim=1)
        if self.kind == "dual":
            out = self._net.get_image_features(pixel_values=pixels)
            return out.last_hidden_state[:, self._prefix :], out.pooler_output
        out = self._net(pixel_values=pixels)
        tokens = out.last_hidden_state[:, self._prefix :]
        pooled = getattr(out, "pooler_output", None)
        return tokens, pooled if pooled is not None else tokens.float().mean(dim=1)

    @torch.inference_mode()
    def _probe(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Run one blank frame: fails loudly at load, not on the first segment, and measures the outputs."""
        pixels = self._preprocess(np.zeros((1, *self._input_hw, 3), np.uint8))
        try:
            tokens, embedding = self._forward(pixels)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise UnsupportedModel(f"{type(self._net).__name__} cannot encode a fixed {self._input_hw} frame with "
                                   f"pixel_values alone: {exc}") from exc
        if self.kind != "vlm":
            patches = self._patch_grid[0] * self._patch_grid[1]
            extra = tokens.shape[1] - patches
            if extra < 0:
                raise UnsupportedModel(f"{type(self._net).__name__}: {tokens.shape[1]} tokens for {patches} patches")
            # ViT-style towers put CLS and register tokens first, then the patches in raster order.
            self._prefix = extra
            tokens = tokens[:, extra:]
        return tokens, embedding


def _kind_of(net: PreTrainedModel) -> Kind:
    if hasattr(net, "get_image_features") and hasattr(net, "get_text_features"):
        return "dual"
    if hasattr(net, "get_image_features") and hasattr(net, "multi_modal_projector"):
        return "vlm"
    if net.main_input_name == "pixel_values" and not hasattr(net, "get_image_features"):
        return "plain"
    raise UnsupportedModel(
        f"{type(net).__name__} ({net.config.model_type}) is not a dual encoder (get_image_features + "
        "get_text_features), a VLM (get_image_features + multi_modal_projector) or a vision model (pixel_values in)"
    )


def _input_size(processor) -> tuple[int, int]:
    """(height, width) the checkpoint was trained on: its processor's final output size."""
    size = processor.crop_size if getattr(processor, "do_center_crop", False) else processor.size
    if size.height and size.width:
        return size.height, size.width
    if size.shortest_edge:
        return size.shortest_edge, size.shortest_edge
    raise UnsupportedModel(f"{type(processor).__name__} has no fixed output size ({size}): variable-resolution towers "
                           "are not supported")


def _normalisation(processor) -> tuple[list[float], list[float], float]:
    """(mean, std, rescale factor): pixels are multiplied by the factor, then normalised with mean and std."""
    scale = processor.rescale_factor if processor.do_rescale else 1.0
    if not processor.do_normalize:
        return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], scale
    return list(processor.image_mean), list(processor.image_std), scale


def _writable(images: np.ndarray) -> np.ndarray:
    """Arrays that crossed a Ray boundary are read-only views of shared memory; torch wants its own."""
    return images if images.flags.writeable and images.flags.c_contiguous else np.array(images, order="C")
