"""The sample broadcast's soundtrack, shared by the speech tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from operators.config import SpeechConfig
from operators.speech import SpeechRecognizer
from operators.speech.audio import read_audio_file
from pipelines.cli.sample_video import write_sample_video


@pytest.fixture(scope="session")
def sample_speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, dict]:
    """(the 24 s sample's audio as float32 mono 16 kHz, its ground truth): three phrases, three cues."""
    path: Path = tmp_path_factory.mktemp("speech") / "news.mp4"
    truth = write_sample_video(path, duration_s=24.0, seed=3)
    return read_audio_file(path), truth


@pytest.fixture(scope="session")
def pocketsphinx() -> SpeechRecognizer:
    return SpeechRecognizer(SpeechConfig(engine="pocketsphinx"))
