"""The AsyncAPI document and the frame JSON Schemas are generated from the frame Structs, and the
checked-in copies are what the generator makes now."""

from __future__ import annotations

import json

from ops.asyncapi import ASYNCAPI_PATH, SCHEMA_PATH, asyncapi, render
from shared.schemas.frames import SERVER_FRAMES
from shared.schemas.wire import ENDPOINT_TYPES


def test_the_checked_in_documents_are_up_to_date() -> None:
    doc, schema = render()
    assert ASYNCAPI_PATH.read_text() == doc, "run `make docs` and commit docs/asyncapi.yaml"
    assert SCHEMA_PATH.read_text() == schema, "run `make docs` and commit docs/frames.schema.json"


def test_every_frame_of_every_endpoint_is_a_message_with_a_schema() -> None:
    doc = asyncapi()
    schemas = doc["components"]["schemas"]
    for endpoint, path in (("chat", "/api/chat/ws"), ("analytics", "/api/analytics/ws")):
        assert doc["channels"][endpoint]["address"] == path
    for endpoint in ("chat", "analytics", "collaboration"):
        kinds = {
            (m["name"], "Client" in key)
            for key, m in doc["components"]["messages"].items()
            if key.lower().startswith(endpoint)
        }
        assert kinds == {(k, True) for k in ENDPOINT_TYPES[endpoint]} | {
            (k, False) for k in SERVER_FRAMES[endpoint]
        }
    # every $ref resolves
    text = json.dumps(doc)
    for ref in {part.split('"')[0] for part in text.split("#/components/schemas/")[1:]}:
        assert ref in schemas, ref
    server_message = schemas["ChatServerMessage"]
    assert server_message["required"] == ["type", "timestamp", "data"]
    assert set(schemas["MessageData"]["required"]) >= {"id", "seq", "content", "author"}
