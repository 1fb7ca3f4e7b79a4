"""The GPU profile: a Whisper-family checkpoint through transformers, by Hugging Face id or local path.

Speech regions (each at most 30 s, VAD cuts longer ones) are read in batches of ``batch_regions``: the
feature extractor pads each to Whisper's 30 s window, so one generate call costs the same for 2 s or 28 s of
speech and batching is what makes short regions affordable. A line's confidence is the geometric mean of
its tokens' probabilities. Word timings are not produced (no ``words``): Whisper's cross-attention word
alignment needs a checkpoint's alignment heads and a second pass; lines carry their region's span.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

from operators.config import SpeechConfig
from operators.speech.audio import SAMPLE_RATE
from operators.speech.engine import Recognised

MAX_NEW_TOKENS = 128  # ~ 30 s of fast speech; a runaway (hallucinated repetition) stops here


class WhisperEngine:
    def __init__(self, config: SpeechConfig):
        if not config.model:
            raise ValueError("speech.engine whisper needs speech.model: a Whisper checkpoint id or path")
        self.config = config
        self.device = torch.device(config.device)
        self.dtype = getattr(torch, config.dtype)
        self.processor = AutoProcessor.from_pretrained(config.model)
        self.model = AutoModelForSpeechSeq2Seq.from_pretrained(config.model, dtype=self.dtype).to(self.device).eval()
        generation = self.model.generation_config
        self._language = config.language if getattr(generation, "lang_to_id", None) else None
        self.max_new_tokens = min(MAX_NEW_TOKENS, self.model.config.max_target_positions - 4)  # prompt: 4 tokens

    @torch.inference_mode()
    def recognise(self, clips: list[np.ndarray]) -> list[Recognised | None]:
        out: list[Recognised | None] = []
        for first in range(0, len(clips), self.config.batch_regions):
            out.extend(self._batch(clips[first: first + self.config.batch_regions]))
        return out

    def _batch(self, clips: list[np.ndarray]) -> list[Recognised | None]:
        features = self.processor.feature_extractor(  # log-mel on the model's device (torch STFT)
            clips, sampling_rate=SAMPLE_RATE, return_tensors="pt", device=self.config.device).input_features
        generated = self.model.generate(
            features.to(self.device, self.dtype), language=self._language, task="transcribe",
            max_new_tokens=self.max_new_tokens, return_dict_in_generate=True, output_scores=True)
        logprobs = self.model.compute_transition_scores(generated.sequences, generated.scores, normalize_logits=True)
        new_tokens = generated.sequences[:, -logprobs.shape[1]:]
        special = torch.tensor(self.processor.tokenizer.all_special_ids, device=new_tokens.device)
        keep = ~torch.isin(new_tokens, special)
        results: list[Recognised | None] = []
        for tokens, lp, mask in zip(new_tokens, logprobs, keep, strict=True):
            text = self.processor.tokenizer.decode(tokens[mask], skip_special_tokens=True).strip()
            if not text or not mask.any():
                results.append(None)
                continue
            confidence = float(torch.exp(lp[mask].float().mean()).clamp(0.0, 1.0))
            results.append(Recognised(text, confidence))
        return results
