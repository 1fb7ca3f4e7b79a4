"""Speech recognition on the audio track: voice activity detection, then ASR on speech only (issue 19).

``SpeechRecognizer.transcribe(audio, start_s, channel)`` turns float32 mono 16 kHz audio into
``operators.transcript.TranscriptLine``s (source "asr"). The engine is chosen by ``SpeechConfig.engine``:
pocketsphinx (offline, CPU, models in its wheel) or a Whisper-family checkpoint through transformers (GPU).
``KeywordSpotter`` finds a moderation lexicon's words in speech.
"""

from operators.speech.audio import SAMPLE_RATE, SpeechRegion
from operators.speech.keywords import KeywordHit, KeywordSpotter, hits_in_lines
from operators.speech.recognizer import SpeechRecognizer, build_engine
from operators.speech.vad import VoiceActivityDetector

__all__ = ["SAMPLE_RATE", "KeywordHit", "KeywordSpotter", "SpeechRecognizer", "SpeechRegion", "VoiceActivityDetector",
           "build_engine", "hits_in_lines"]
