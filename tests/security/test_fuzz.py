"""Property-based fuzzing: malformed input to a message decoder or an HTTP model is a MessageError (a dead
letter) or a validation error (a 4xx), never another exception and never a hang.

The decoders are driven through their public functions (messages.encode / messages.decode), so these
tests hold whatever the record framing is."""

from __future__ import annotations

import json
import warnings
from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from contracts import messages
from pipelines.api.http import AckRequest, QueryRequest, StandingRequest

FUZZ = settings(max_examples=200, deadline=1000, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
schemas = st.sampled_from([m.SCHEMA for m in messages.MESSAGE_TYPES]) | st.text(max_size=12)


headers = st.builds(
    lambda schema, version, extra, fields: {"schema": schema, "version": version, **dict(zip(fields, extra))},
    schemas, st.integers(-2, 5) | json_values, st.lists(json_values, max_size=6),
    st.lists(st.sampled_from(sorted({f for m in messages.MESSAGE_TYPES for f in m.model_fields}
                                    | {"tenant_id", "scope", "start", "since_s"})), max_size=6),
)


def _decode_or_dead_letter(value: bytes, headers: messages.Headers | None = None) -> None:
    try:
        message, _ = messages.decode(value, headers=headers)
    except messages.MessageError as exc:
        assert exc.code and exc.reason
        return
    # What decodes re-encodes: a message that passed validation is a usable message.
    if isinstance(message, messages.VideoSegment):
        value, headers = messages.segment_record(message, b"")
        messages.decode(bytes(value), headers=headers)
    else:
        messages.decode(messages.encode(message))
    if isinstance(message, messages.Query):
        message.scope.resolve()


@FUZZ
@given(st.binary(max_size=2048))
def test_decode_of_arbitrary_bytes(value):
    _decode_or_dead_letter(value)


@FUZZ
@given(headers, st.binary(max_size=64))
def test_decode_of_headers_with_wrong_fields(header, payload):
    """Headers that name a real schema with fields of the wrong types, missing or extra, written by the
    public encoders (model_construct skips validation, so the wrong values reach the record)."""
    model = next((m for m in messages.MESSAGE_TYPES if m.SCHEMA == header.get("schema")), messages.Query)
    fields = {k: v for k, v in header.items() if k not in ("schema", "version")}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydantic warns while serialising the wrong types
            built = model.model_construct(**fields)
            if isinstance(built, messages.VideoSegment):  # wire contract 2: raw bytes, metadata in a header
                value, record_headers = messages.segment_record(built, payload)
            else:
                value, record_headers = messages.encode(built), None
    except (PydanticSerializationError, ValueError, TypeError):
        return  # not representable in a record at all
    _decode_or_dead_letter(bytes(value), record_headers)


@FUZZ
@given(st.sampled_from(["query", "segment", "alert", "answer", "dead_letter"]), st.data())
def test_decode_of_mutated_valid_records(kind, data):
    """Real records, truncated or with bytes flipped."""
    from tests.security.records import sample_record

    value = bytearray(sample_record(kind))
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(value) - 1))
        value[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(value)))
    _decode_or_dead_letter(bytes(value[:cut]))


def _http_model_or_422(model, body) -> None:
    try:
        request = model.model_validate(body)
    except ValidationError:
        return  # FastAPI answers 422
    if isinstance(request, QueryRequest):
        try:
            query = request.to_message()  # the route turns a ValidationError here into a 422 too
        except ValidationError:
            return
        query.scope.resolve()


query_bodies = st.fixed_dictionaries({}, optional={
    "tenant_id": st.text(max_size=20) | json_values, "stream_ids": st.lists(st.text(max_size=10)) | json_values,
    "text": st.text(max_size=50) | json_values, "image_jpeg_b64": st.text(max_size=20) | st.none(),
    "since_s": st.floats(allow_nan=True) | json_values, "start": st.datetimes() | st.text(max_size=30),
    "end": st.datetimes(timezones=st.none() | st.timezones()) | st.text(max_size=30) | st.integers(),
    "top_k": st.integers(-5, 200) | json_values, "occurrence": st.text(max_size=6),
    "adaptive_k": json_values, "generate": json_values, "nope": json_values})


@FUZZ
@given(query_bodies)
def test_query_request_bodies(body):
    body = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in body.items()}
    _http_model_or_422(QueryRequest, body)


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(StandingRequest.model_fields) + ["x"]), json_values, max_size=8))
def test_standing_request_bodies(body):
    _http_model_or_422(StandingRequest, body)


@FUZZ
@given(st.dictionaries(st.sampled_from(["by", "note", "x"]), json_values, max_size=3) | json_values)
def test_ack_request_bodies(body):
    _http_model_or_422(AckRequest, body)


@pytest.fixture(scope="module")
def http():
    from fastapi.testclient import TestClient

    from pipelines.api.http import api

    return TestClient(api, raise_server_exceptions=False)


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(["/v1/query", "/v1/queries", "/v1/standing-queries", "/v1/alerts/a1/ack"]),
       st.binary(max_size=512) | st.builds(lambda v: json.dumps(v, allow_nan=True).encode(), json_values))
def test_malformed_http_bodies_are_4xx(http, path, body):
    """Through the API's own app (no Serve replica): a body that is not JSON is a 4xx in the API's error
    shape. One that parses goes on to the route, which needs a replica here (a 500 in this harness); the
    model tests above cover its validation."""
    response = http.post(path, content=body, headers={"content-type": "application/json"})
    if response.status_code == 500:
        assert body.strip() == b"" or json.loads(body) is not ...  # parsed: it reached the route
        return
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["code"]
