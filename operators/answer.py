"""The answer stage: turn a question and retrieved evidence into an answer.

Three kinds, chosen by ``AnswerConfig.model``:

- ``extractive`` (no model): a deterministic sentence listing the evidence. It
  never says more than the memory holds, so it is the honest default offline.
- ``vlm`` (LLaVA-style, a vision tower + projector in front of a language model):
  the stored visual tokens of each evidence frame already live in the language
  model's input-embedding space (the encoder *is* this VLM's vision tower and
  projector), so they are spliced into ``inputs_embeds`` as they are. Frames are
  never re-encoded at answer time: the pixels are gone, the tokens are the memory.
- ``llm`` (text-only causal LM): the evidence is rendered as text lines.

Generation is greedy so that the same question over the same memory gets the
same answer, which keeps replays and tests reproducible.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoTokenizer,
    PreTrainedModel,
)

from operators.config import AnswerConfig
from operators.frames import StageError
from operators.tiny_models import is_tiny

log = logging.getLogger(__name__)

Kind = Literal["extractive", "vlm", "llm"]

_INSTRUCTIONS = (
    "You answer questions about live video streams. Use only the evidence frames below, "
    "which are in chronological order, and cite the stream and time you rely on."
)
# Stands in for the evidence while the chat template is rendered, then the rendered text is
# split around its first occurrence (a question quoting it comes later): the evidence of a VLM
# is embeddings, which no template can render.
_EVIDENCE_SLOT = "<<livelens-evidence>>"


@dataclass(frozen=True)
class EvidenceItem:
    """One retrieved frame.

    t_start, t_end: seconds from the stream's start.
    wallclock_start: ISO 8601 with a UTC offset; it orders evidence across streams.
    tokens: the frame's stored visual tokens [K, D], or None once memory has dropped them
        (older frames keep only their index embedding and metadata).
    positions: original token positions of ``tokens`` [K].
    text: on-screen text recognised in the frame, if any.
    said: what was said around it (captions, subtitles, recognised speech of the evidence window), if any.
    """

    stream_id: str
    t_start: float
    t_end: float
    wallclock_start: str
    score: float
    tokens: np.ndarray | None
    positions: np.ndarray | None
    text: str = ""
    said: str = ""

    def __post_init__(self) -> None:
        if self.t_end < self.t_start:
            raise ValueError(f"t_end {self.t_end} is before t_start {self.t_start}")
        if self.wallclock.tzinfo is None:
            raise ValueError(f"wallclock_start {self.wallclock_start!r} has no UTC offset")
        if self.tokens is not None and self.tokens.ndim != 2:
            raise ValueError(f"tokens must be [K, D], got {self.tokens.shape}")
        if self.positions is not None and (self.tokens is None or len(self.positions) != len(self.tokens)):
            raise ValueError("positions need one entry per stored token")

    @property
    def wallclock(self) -> datetime:
        return datetime.fromisoformat(self.wallclock_start)

    def label(self) -> str:
        """Where and when, for humans and for the prompt: 'stream s at 12.0-14.0 s'."""
        return f"stream {self.stream_id} at {self.t_start:.1f}-{self.t_end:.1f} s"


@dataclass(frozen=True)
class AnswerResult:
    text: str
    extractive: bool
    model: str
    evidence_used: int


@dataclass(frozen=True)
class ModelInputs:
    """What ``generate`` receives: token ids (llm) or input embeddings (vlm), shape [1, L(, D)]."""

    input_ids: torch.Tensor | None
    inputs_embeds: torch.Tensor | None
    used: tuple[EvidenceItem, ...]

    @property
    def length(self) -> int:
        return (self.input_ids if self.input_ids is not None else self.inputs_embeds).shape[1]


class Answerer:
    """Answers questions from evidence; see the module docstring for the three kinds."""

    def __init__(self, config: AnswerConfig, model: str | Path | None):
        self.config = config
        self.model_name = str(model) if model else ""
        self.model: PreTrainedModel | None = None
        self.kind: Kind = "extractive"
        self.expects_token_dim: int | None = None
        # Host staging of the evidence tokens on CUDA: pinned, kept between calls, and the event after which
        # the last copy out of it is done (pinning 18 MB a call cost more than copying it).
        self._pinned: torch.Tensor | None = None
        self._pinned_read: torch.cuda.Event | None = None
        if not self.model_name:
            log.info("answer stage: no model configured, answers are extractive")
            return
        dtype = getattr(torch, config.dtype)
        tokenizer = AutoTokenizer.from_pretrained(self.model_name)
        # A vision config marks a VLM; its language model reads our tokens through inputs_embeds.
        if hasattr(AutoConfig.from_pretrained(self.model_name), "vision_config"):
            model = AutoModelForImageTextToText.from_pretrained(self.model_name, dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(self.model_name, dtype=dtype)
        self._use(model, tokenizer, random_weights=is_tiny(self.model_name))

    @classmethod
    def around(cls, config: AnswerConfig, model: PreTrainedModel, tokenizer, name: str, *,
               random_weights: bool) -> Answerer:
        """An answerer around a model already in memory: benchmarks/answer_latency.py builds a 7B-class shape from
        its transformers config with random weights on the device, where there is no checkpoint to load."""
        answerer = cls(config, None)
        answerer.model_name = name
        answerer._use(model, tokenizer, random_weights=random_weights)
        return answerer

    def _use(self, model: PreTrainedModel, tokenizer, *, random_weights: bool) -> None:
        self.tokenizer = tokenizer
        self.model = model
        if hasattr(model.config, "vision_config"):
            self.kind = "vlm"
            self.expects_token_dim = model.get_input_embeddings().embedding_dim
        else:
            self.kind = "llm"
        self.model.to(self.config.device).eval()
        text_config = self.model.config.get_text_config()
        if getattr(text_config, "max_position_embeddings", None) is None:
            raise ValueError(f"{self.model_name}: config has no max_position_embeddings to bound the prompt by")
        self.max_positions: int = text_config.max_position_embeddings
        self.random_weights = random_weights
        if self.config.compile:
            self._compile()
        log.info(
            "answer stage: %s loaded as %s (%s on %s, %d positions, token dim %s)%s",
            self.model_name, self.kind, self.config.dtype, self.config.device, self.max_positions,
            self.expects_token_dim, ", random weights" if self.random_weights else "",
        )

    def _compile(self) -> None:
        """``AnswerConfig.compile``: every decoder layer's modules but its attention through torch.compile, then one
        short generation so that the graphs (a prompt of any length, and the one-token decoding step) are built
        now, not on the first question."""
        layers = getattr(self.model.get_decoder(), "layers", None)
        if not isinstance(layers, torch.nn.ModuleList) or not all(hasattr(layer, "self_attn") for layer in layers):
            raise ValueError(f"answer.compile: {self.model_name} has no Llama-family decoder layers (get_decoder()."
                             "layers, each with a self_attn); set answer.compile = false for this model")
        started = time.perf_counter()
        for layer in layers:
            for name, module in layer.named_children():
                if name != "self_attn":
                    module.compile(dynamic=True)
        ids = self._ids_tensor(self.tokenizer.encode("warm up the compiled layers"))
        with torch.inference_mode():
            self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2,
                                min_new_tokens=2, do_sample=False, num_beams=1)
        log.info("answer stage: %s compiled in %.1f s", self.model_name, time.perf_counter() - started)

    def answer(self, question: str, evidence: list[EvidenceItem]) -> AnswerResult:
        # With nothing retrieved there is nothing to ground an answer on; a model would only invent one.
        if self.kind == "extractive" or not evidence:
            return self._extractive(question, evidence)
        inputs = self.build_inputs(question, evidence)
        ones = torch.ones((1, inputs.length), dtype=torch.long, device=self.config.device)
        with torch.inference_mode():
            if inputs.inputs_embeds is not None:
                # Generating from embeddings alone returns only the new tokens.
                out = self.model.generate(
                    inputs_embeds=inputs.inputs_embeds, attention_mask=ones,
                    max_new_tokens=self.config.max_new_tokens, do_sample=False, num_beams=1,
                )[0]
            else:
                out = self.model.generate(
                    input_ids=inputs.input_ids, attention_mask=ones,
                    max_new_tokens=self.config.max_new_tokens, do_sample=False, num_beams=1,
                )[0, inputs.length :]
        text = self.tokenizer.decode(out, skip_special_tokens=True).strip()
        if self.random_weights:
            text += (
                f"\n[Note: {self.model_name} is a tiny model with random weights built by livelens for the "
                "offline profile; this text means nothing.]"
            )
        return AnswerResult(text=text, extractive=False, model=self.model_name, evidence_used=len(inputs.used))

    def build_inputs(self, question: str, evidence: list[EvidenceItem]) -> ModelInputs:
        """The prompt for ``generate``: instructions, then evidence in time order, then the question.

        Evidence is admitted best score first until ``max_evidence_frames`` or the position
        budget (the model's max positions less ``max_new_tokens``) is reached, then put in
        chronological order so the model reads events in the order they happened. A VLM's frames are
        marked by their time alone, under a ``[stream …]`` header where the stream changes: the prompt
        is prefilled before the first token, and 64 full markers ("[stream cam-0, 2.0-4.0 s]", ~16
        positions each) were 28% of a 20%-kept prompt's positions (BENCHMARKS.md, answer latency).
        """
        if self.model is None:
            raise RuntimeError("an extractive Answerer has no model inputs")
        prefix, suffix = self._prompt_ids(question)
        budget = self.max_positions - self.config.max_new_tokens - len(prefix) - len(suffix)
        if budget < 0:
            reason = f"the question needs {-budget} more positions than {self.model_name} has"
            raise StageError("question_too_long", reason, stage="answer")
        candidates = _by_score(evidence)[: self.config.max_evidence_frames]
        headers, marks = self._markers(candidates)
        pieces: list[tuple[EvidenceItem, list[int], np.ndarray | None]] = []
        for item, ids in zip(candidates, marks):
            visual = self._visual(item)
            # As if each frame opened a stream run: its header is counted whether or not it gets one.
            cost = len(headers.get(item.stream_id, ())) + len(ids) + (0 if visual is None else visual.shape[0])
            if cost > budget:
                break
            budget -= cost
            pieces.append((item, ids, visual))
        if not pieces:
            reason = f"the best evidence frame does not fit in {self.model_name}'s positions"
            raise StageError("evidence_too_large", reason, stage="answer")
        pieces.sort(key=lambda piece: _chronological(piece[0]))
        stream = None
        for at, (item, ids, visual) in enumerate(pieces):
            if item.stream_id != stream:  # a stream's run begins: its header first
                pieces[at] = (item, headers.get(item.stream_id, []) + ids, visual)
                stream = item.stream_id
        used = tuple(item for item, _, _ in pieces)
        if self.kind == "llm":
            ids = prefix + [i for _, piece_ids, _ in pieces for i in piece_ids] + suffix
            return ModelInputs(input_ids=self._ids_tensor(ids), inputs_embeds=None, used=used)
        return ModelInputs(input_ids=None, inputs_embeds=self._spliced(prefix, pieces, suffix)[None], used=used)

    def _spliced(self, prefix: list[int], pieces: list[tuple[EvidenceItem, list[int], np.ndarray | None]],
                 suffix: list[int]) -> torch.Tensor:
        """[L, D] input embeddings: the text embedded in one call, every frame's stored tokens in one copy to the
        device, each written at its positions (64 frames piece by piece cost ~25 ms of launches and copies)."""
        text_ids, text_at, visuals, visual_at = list(prefix), list(range(len(prefix))), [], []
        at = len(prefix)
        for _, ids, visual in pieces:
            text_ids += ids
            text_at += range(at, at + len(ids))
            at += len(ids)
            if visual is not None:
                visuals.append(visual)
                visual_at += range(at, at + len(visual))
                at += len(visual)
        text_ids += suffix
        text_at += range(at, at + len(suffix))
        at += len(suffix)
        embed = self.model.get_input_embeddings()
        out = torch.empty((at, embed.embedding_dim), dtype=self.model.dtype, device=self.config.device)
        out[self._index(text_at)] = embed(self._ids_tensor(text_ids))[0]
        if visuals:
            host = self._staged(visuals) if out.device.type == "cuda" else torch.from_numpy(np.concatenate(visuals))
            out[self._index(visual_at)] = host.to(out.device, non_blocking=True).to(out.dtype)
            if out.device.type == "cuda":
                self._pinned_read = torch.cuda.Event()
                self._pinned_read.record()
        return out

    def _staged(self, visuals: list[np.ndarray]) -> torch.Tensor:
        """Every frame's tokens in one pinned host tensor: written straight into the kept buffer (grown when too
        small) once the previous call's copy out of it is done."""
        rows, dim = sum(len(v) for v in visuals), visuals[0].shape[1]
        dtype = torch.from_numpy(visuals[0][:0]).dtype
        if self._pinned_read is not None:
            self._pinned_read.synchronize()
        if self._pinned is None or self._pinned.dtype != dtype or self._pinned.shape[1] != dim or len(self._pinned) < rows:
            self._pinned = torch.empty((rows, dim), dtype=dtype, pin_memory=True)
        staged = self._pinned[:rows]
        np.concatenate(visuals, out=staged.numpy())
        return staged

    def _prompt_ids(self, question: str) -> tuple[list[int], list[int]]:
        """Token ids before and after the evidence: the chat template when there is one, else a plain prompt."""
        content = f"{_INSTRUCTIONS}\n{_EVIDENCE_SLOT}\nQuestion: {question}"
        if self.tokenizer.chat_template:
            rendered = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
            )
            before, _, after = rendered.partition(_EVIDENCE_SLOT)
            bos: list[int] = []  # the template writes any BOS itself
        else:
            before, _, after = content.partition(_EVIDENCE_SLOT)
            after += "\nAnswer:"
            bos = [] if self.tokenizer.bos_token_id is None else [self.tokenizer.bos_token_id]
        encode = self.tokenizer.encode
        return bos + encode(before, add_special_tokens=False), encode(after, add_special_tokens=False)

    def _markers(self, items: list[EvidenceItem]) -> tuple[dict[str, list[int]], list[list[int]]]:
        """Token ids of each stream's header (a VLM's; none for an LLM) and of each frame's own text, in one
        tokenizer call. An LLM's frame is a line that names its stream and times; a VLM's, its start time."""
        texts = []
        for item in items:
            said = (f', on-screen text: "{item.text}"' if item.text else "") + (
                f', said: "{item.said}"' if item.said else "")
            if self.kind == "llm":
                texts.append(f"- {item.label()} ({item.wallclock_start}), score {item.score:.2f}{said}\n")
            else:
                texts.append(f" {item.t_start:.1f} s{said}{'' if item.tokens is not None else ', no visual tokens'}")
        streams = [] if self.kind == "llm" else sorted({item.stream_id for item in items})
        ids = self.tokenizer([f"\n[stream {stream}]" for stream in streams] + texts,
                             add_special_tokens=False)["input_ids"] if items else []
        return dict(zip(streams, ids)), ids[len(streams):]

    def _visual(self, item: EvidenceItem) -> np.ndarray | None:
        """A VLM's frame's stored tokens (host array), checked against the model; None for an LLM or none kept."""
        if self.kind == "llm" or item.tokens is None:
            return None
        if item.tokens.shape[1] != self.expects_token_dim:
            raise ValueError(
                f"evidence tokens have dim {item.tokens.shape[1]} but {self.model_name} embeds to "
                f"{self.expects_token_dim}: the encoder is not this VLM's own vision tower and projector"
            )
        return item.tokens

    def _ids_tensor(self, ids: list[int]) -> torch.Tensor:
        return torch.tensor([ids], dtype=torch.long, device=self.config.device)

    def _index(self, positions: list[int]) -> torch.Tensor:
        return torch.tensor(positions, dtype=torch.long, device=self.config.device)

    def _extractive(self, question: str, evidence: list[EvidenceItem]) -> AnswerResult:
        asked = f'"{question}"' if question.strip() else "the query"
        lead = "No generative model is configured; this answer is extractive. " if self.model is None else ""
        if not evidence:
            return AnswerResult(
                text=f"{lead}Nothing in memory matched {asked} in the requested scope.",
                extractive=True, model=self.model_name, evidence_used=0,
            )
        used = sorted(_by_score(evidence)[: self.config.max_evidence_frames], key=_chronological)
        matches = []
        for item in used:
            on_screen = (f', on-screen text "{item.text}"' if item.text else "") + (
                f', said "{item.said}"' if item.said else "")
            matches.append(f"{item.label()} ({item.wallclock_start}, score {item.score:.2f}{on_screen})")
        text = f"{lead}Best matches for {asked}, in time order: " + "; ".join(matches) + "."
        if len(evidence) > len(used):
            text += f" {len(evidence) - len(used)} lower-scoring matches not shown."
        return AnswerResult(text=text, extractive=True, model=self.model_name, evidence_used=len(used))


def _by_score(evidence: list[EvidenceItem]) -> list[EvidenceItem]:
    # Stable sort: equal scores keep retrieval order, so selection is deterministic.
    return sorted(evidence, key=lambda item: -item.score)


def _chronological(item: EvidenceItem) -> tuple[datetime, str, float]:
    return item.wallclock, item.stream_id, item.t_start
