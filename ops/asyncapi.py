"""The AsyncAPI 3 document and JSON Schemas of the three WebSocket endpoints, generated.

Everything comes from the msgspec Structs the server itself decodes and encodes with
(``shared.schemas.wire`` for client frames, ``shared.schemas.frames`` for server frames), so the
documents cannot drift from the code: ``tests/unit/test_asyncapi.py`` fails when the checked-in
files differ from what this module generates. Regenerate with ``make docs``
(``python -m ops.asyncapi``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from shared.schemas.frames import SERVER_FRAMES
from shared.schemas.wire import ENDPOINT_TYPES

__all__ = ["ASYNCAPI_PATH", "SCHEMA_PATH", "asyncapi", "frame_schemas", "main"]

ROOT = Path(__file__).resolve().parent.parent
ASYNCAPI_PATH = ROOT / "docs" / "asyncapi.yaml"
SCHEMA_PATH = ROOT / "docs" / "frames.schema.json"
REF = "#/components/schemas/{name}"
PATHS = {
    "chat": "/api/chat/ws",
    "analytics": "/api/analytics/ws",
    "collaboration": "/api/collaboration/ws",
}
TOP_LEVEL = ("auth", "refresh")  # their fields may sit next to ``type`` (docs/protocol.md)
TIMESTAMP = {
    "type": "string",
    "description": "ISO 8601 UTC with exactly three fractional digits and Z",
    "examples": ["2026-01-05T09:30:00.123Z"],
}


def _title(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _data_types() -> list[type[msgspec.Struct]]:
    seen: dict[str, type[msgspec.Struct]] = {}
    for table in (*ENDPOINT_TYPES.values(), *SERVER_FRAMES.values()):
        for t in table.values():
            seen.setdefault(t.__name__, t)
    return list(seen.values())


def _client_frame(endpoint: str, kind: str, data: type[msgspec.Struct]) -> dict[str, Any]:
    props: dict[str, Any] = {
        "type": {"const": kind},
        "id": {"type": "string", "minLength": 1, "maxLength": 64},
        "data": {"$ref": REF.format(name=data.__name__)},
    }
    if kind in TOP_LEVEL:  # the reference page's form: the fields next to `type`
        _, defs = msgspec.json.schema_components([data], ref_template=REF)
        props.update(defs[data.__name__]["properties"])
    return {
        "title": f"{endpoint} client {kind}",
        "type": "object",
        "properties": props,
        "required": ["type"],
    }


def _server_frame(endpoint: str, kind: str, data: type[msgspec.Struct]) -> dict[str, Any]:
    props: dict[str, Any] = {
        "type": {"const": kind},
        "timestamp": TIMESTAMP,
        "data": {"$ref": REF.format(name=data.__name__)},
        "id": {"type": "string", "description": "the client frame this answers"},
    }
    if kind == "error":
        props["error"] = {"type": "string", "description": "what went wrong, for humans"}
    return {
        "title": f"{endpoint} server {kind}",
        "type": "object",
        "properties": props,
        "required": ["type", "timestamp", "data"],
    }


def frame_schemas() -> dict[str, Any]:
    """Every frame's JSON Schema, and the Structs they refer to, as components."""
    _, components = msgspec.json.schema_components(_data_types(), ref_template=REF)
    for endpoint, types in ENDPOINT_TYPES.items():
        for kind, data in types.items():
            components[f"{_title(endpoint)}Client{_title(kind)}"] = _client_frame(
                endpoint, kind, data
            )
    for endpoint, types in SERVER_FRAMES.items():
        for kind, data in types.items():
            components[f"{_title(endpoint)}Server{_title(kind)}"] = _server_frame(
                endpoint, kind, data
            )
    return dict(sorted(components.items()))


def asyncapi() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for endpoint, path in PATHS.items():
        sent, received = {}, {}
        for kind in ENDPOINT_TYPES[endpoint]:
            name = f"{_title(endpoint)}Client{_title(kind)}"
            messages[name] = {"name": kind, "payload": {"$ref": REF.format(name=name)}}
            received[name] = {"$ref": f"#/components/messages/{name}"}
        for kind in SERVER_FRAMES[endpoint]:
            name = f"{_title(endpoint)}Server{_title(kind)}"
            messages[name] = {"name": kind, "payload": {"$ref": REF.format(name=name)}}
            sent[name] = {"$ref": f"#/components/messages/{name}"}
        channels[endpoint] = {
            "address": path,
            "description": f"The {endpoint} endpoint: one context per connection "
            "(`?token=...&contextId=...`, or an `auth` frame first).",
            "messages": {**received, **sent},
        }
        channel = {"$ref": f"#/channels/{endpoint}"}
        operations[f"{endpoint}ClientFrames"] = {
            "action": "receive",
            "channel": channel,
            "summary": f"Frames clients send on {path}",
            "messages": [{"$ref": f"#/channels/{endpoint}/messages/{n}"} for n in received],
        }
        operations[f"{endpoint}ServerFrames"] = {
            "action": "send",
            "channel": channel,
            "summary": f"Frames the server sends on {path}",
            "messages": [{"$ref": f"#/channels/{endpoint}/messages/{n}"} for n in sent],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Atomic Guide realtime",
            "version": "1.0.0",
            "description": "WebSocket endpoints for chat, analytics and collaboration. Every "
            "frame is one JSON object (or, with batch=1, a JSON array of them). See "
            "docs/protocol.md for the rules this schema cannot say.",
        },
        "servers": {
            "gateway": {"host": "127.0.0.1:8000", "protocol": "ws", "description": "`make up`"}
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": frame_schemas()},
    }


def render() -> tuple[str, str]:
    """(the AsyncAPI YAML, the JSON Schema document) as they should be on disk."""
    import yaml  # a dev dependency: the generator runs in development, never in production

    doc = yaml.safe_dump(asyncapi(), sort_keys=False, allow_unicode=True, width=100)
    header = "# Generated by `make docs` (python -m ops.asyncapi) from the frame Structs.\n"
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Atomic Guide realtime frames",
        "$defs": frame_schemas(),
    }
    text = json.dumps(schema, indent=2).replace("#/components/schemas/", "#/$defs/")
    return header + doc, text + "\n"


def main() -> None:
    doc, schema = render()
    ASYNCAPI_PATH.write_text(doc)
    SCHEMA_PATH.write_text(schema)
    print(
        f"wrote {ASYNCAPI_PATH.relative_to(ROOT)} and {SCHEMA_PATH.relative_to(ROOT)}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
