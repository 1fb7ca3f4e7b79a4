"""The offline CPU profile: CMU PocketSphinx with the en-us models that ship inside its wheel.

Each speech region is decoded as one utterance (``full_utt``: cepstral mean normalisation over the whole
region, which is what the acoustic model was trained with). Word confidence is the word's posterior
probability in the utterance's lattice (computed by ``get_prob``), which separates right from wrong words
well on read speech: on the LibriVox test utterances correct words are mostly > 0.9, misrecognised ones
mostly < 0.4.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pocketsphinx import Decoder, get_model_path

from operators.config import SpeechConfig
from operators.speech.audio import pcm16
from operators.speech.engine import Recognised
from operators.transcript import Word

FRAME_S = 0.01  # pocketsphinx's frame rate: 100 frames per second
FILLERS = ("<s>", "</s>", "<sil>", "[NOISE]", "[SPEECH]", "[LAUGH]", "[BREATH]", "[COUGH]", "[UH]", "[UM]")


def model_paths(config: SpeechConfig) -> dict[str, str]:
    """Acoustic model, language model and dictionary for the configured language."""
    root = Path(config.model) if config.model else Path(get_model_path())
    lang = "en-us" if config.language == "en" else config.language
    paths = {"hmm": root / lang / lang, "lm": root / lang / f"{lang}.lm.bin",
             "dict": root / lang / f"cmudict-{lang}.dict"}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise ValueError(f"speech.engine pocketsphinx: no models for language {config.language!r} "
                         f"(missing {missing}); the pocketsphinx wheel ships en-us only")
    return {k: str(v) for k, v in paths.items()}


def new_decoder(config: SpeechConfig, **options) -> Decoder:
    return Decoder(loglevel="ERROR", **{**model_paths(config), **options})  # options override the models (lm=None)


class PocketsphinxEngine:
    """Free transcription of speech clips with the n-gram language model. One decoder; not thread-safe."""

    def __init__(self, config: SpeechConfig):
        self.config = config
        self._decoder = new_decoder(config)
        self._logmath = self._decoder.get_logmath()

    def recognise(self, clips: list[np.ndarray]) -> list[Recognised | None]:
        """One result per clip, None where nothing but silence and fillers was heard."""
        return [self._one(clip) for clip in clips]

    def _one(self, clip: np.ndarray) -> Recognised | None:
        decoder = self._decoder
        decoder.start_utt()
        decoder.process_raw(pcm16(clip), full_utt=True)
        decoder.end_utt()
        if decoder.hyp() is None:
            return None
        decoder.get_prob()  # fills the lattice posteriors that the segments' prob then reports
        words = []
        for seg in decoder.seg():
            if seg.word in FILLERS:
                continue
            confidence = min(1.0, max(0.0, float(seg.prob)))
            if confidence < self.config.min_word_confidence:
                continue
            text = seg.word.split("(")[0]  # alternative pronunciations are spelt word(2)
            words.append(Word(text, seg.start_frame * FRAME_S, (seg.end_frame + 1) * FRAME_S, confidence))
        if not words:
            return None
        return Recognised(" ".join(w.text for w in words), float(np.mean([w.confidence for w in words])),
                          tuple(words))
