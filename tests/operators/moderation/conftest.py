from __future__ import annotations

import pytest

from operators.ocr import TextEmbedder


@pytest.fixture(scope="session")
def embedder() -> TextEmbedder:
    return TextEmbedder()
