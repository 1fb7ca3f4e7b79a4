"""JSON Schema files for the Kafka message models, generated from the pydantic models.

    python -m contracts.schemas [DIRECTORY]     # default docs/schemas

One file per model and version, ``<schema>.v<version>.json`` (JSON Schema 2020-12): the record value of a
query, answer, alert or dead letter, and the ``livelens.segment`` header of a video segment record. Schema
registries, Connect converters and producers in other languages validate against them;
tests/test_schemas.py fails when a model changed and the files were not regenerated.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from contracts.messages import MESSAGE_TYPES, Message, VideoSegment

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "docs" / "schemas"


def file_name(model: type[Message]) -> str:
    return f"{model.SCHEMA}.v{model.VERSION}.json"


def json_schema(model: type[Message]) -> dict[str, Any]:
    where = "the livelens.segment record header" if model is VideoSegment else "the record value"
    schema = model.model_json_schema(by_alias=True)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": file_name(model),
        **schema,
        "description": f"{schema.get('description', '').strip()}\n\nOn the wire (contract 2): {where}.",
    }


def render(model: type[Message]) -> str:
    return json.dumps(json_schema(model), indent=2, sort_keys=True) + "\n"


def write(directory: Path = DEFAULT_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for model in MESSAGE_TYPES:
        path = directory / file_name(model)
        path.write_text(render(model))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DIR):
        print(path)
