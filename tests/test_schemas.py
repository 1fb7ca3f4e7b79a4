"""docs/schemas/ holds a JSON Schema per message model, current with the models, and records validate against it."""

from __future__ import annotations

import json

import jsonschema
import pytest

from contracts import messages, schemas
from tests.test_contracts import MESSAGES, record


@pytest.mark.parametrize("model", messages.MESSAGE_TYPES, ids=lambda m: m.SCHEMA)
def test_shipped_schema_files_are_current(model):
    path = schemas.DEFAULT_DIR / schemas.file_name(model)
    assert path.is_file(), f"{path} missing: run python -m contracts.schemas"
    assert path.read_text() == schemas.render(model), f"{path} is stale: run python -m contracts.schemas"


def test_no_schema_file_without_a_model():
    shipped = {p.name for p in schemas.DEFAULT_DIR.glob("*.json")}
    assert shipped == {schemas.file_name(m) for m in messages.MESSAGE_TYPES}


@pytest.mark.parametrize("message, payload", MESSAGES, ids=lambda m: getattr(m, "SCHEMA", "payload"))
def test_what_livelens_writes_validates_against_the_shipped_schema(message, payload):
    value, headers = record(message, payload)
    document = json.loads(dict(headers)["livelens.segment"] if headers else value)
    validator = jsonschema.Draft202012Validator(schemas.json_schema(type(message)),
                                                format_checker=jsonschema.FormatChecker())
    validator.validate(document)


@pytest.mark.parametrize(
    "document, valid",
    [
        ({"schema": "query", "version": 1, "tenant_id": "default", "text": "what happened"}, True),
        ({"schema": "query", "version": 1, "tenant_id": "default", "top_k": 0}, False),
        ({"schema": "query", "version": 1, "tenant_id": "bad tenant!"}, False),
        ({"schema": "query", "version": 1, "tenant_id": "default", "colour": "red"}, False),
    ],
)
def test_the_query_schema_accepts_what_livelens_accepts(document, valid):
    """A query written by hand (kcat, another language) that passes the schema is one livelens reads, and back."""
    validator = jsonschema.Draft202012Validator(schemas.json_schema(messages.Query))
    assert validator.is_valid(document) is valid
    try:
        messages.decode(json.dumps(document).encode(), expect=messages.Query)
        read = True
    except messages.MessageError:
        read = False
    assert read is valid
