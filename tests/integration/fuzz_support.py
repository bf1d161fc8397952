"""A seeded generator of bad client frames, each with the error codes the protocol allows for it.

Every frame is bad by construction (docs/protocol.md, "Errors and close codes"): not JSON, not an
object, an unknown or server-only type, a field of the wrong JSON type or missing, a value out of
range, a lone surrogate in any string, nesting deeper than any decoder follows, a binary frame,
or a frame that is well formed but out of order for the connection's state (a second ``auth``,
an edit before a join, a version the server never had). Oversized frames are made separately:
the third within a minute closes the connection, so a caller sends at most two per socket.

Expectations are sets of protocol codes, derived from the protocol rather than from the server.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Bad", "Fuzzer", "ENDPOINT_PATHS"]

ENDPOINT_PATHS = {
    "chat": "/api/chat/ws",
    "analytics": "/api/analytics/ws",
    "collaboration": "/api/collaboration/ws",
}
CLIENT_TYPES = {
    "chat": ["message", "typing", "history"],
    "analytics": ["subscribe", "unsubscribe"],
    "collaboration": ["join_session", "leave_session", "edit", "cursor", "snapshot"],
}
SERVER_ONLY = [
    "connected",
    "ack",
    "error",
    "pong",
    "presence",
    "user_joined",
    "user_left",
    "metric_update",
    "subscribed",
    "session_joined",
    "participant_joined",
    "recovered",
    "refreshed",
]
SCHEMA = {"invalid_message"}
# A fuzzed edit is refused whichever check fires first: shape, range, version or role.
EDIT_REFUSALS = {"invalid_message", "version_mismatch", "not_found"}


@dataclass(frozen=True)
class Bad:
    """One bad frame: text (or bytes for a binary frame), the codes allowed for its single
    error reply, and what kind of bad it is (for the report)."""

    payload: str | bytes
    codes: frozenset[str]
    kind: str


# Valid data of every client type: (data, required fields) -- the fuzzer breaks one thing each.
VALID: dict[str, dict[str, tuple[dict[str, Any], tuple[str, ...]]]] = {
    "chat": {
        "message": ({"content": "hello", "messageType": "text"}, ("content",)),
        "typing": ({"isTyping": True}, ("isTyping",)),
        "history": ({"limit": 10, "beforeSeq": 5}, ()),
    },
    "analytics": {
        "subscribe": ({"metrics": ["activity"]}, ("metrics",)),
        "unsubscribe": ({"metrics": ["engagement"]}, ("metrics",)),
    },
    "collaboration": {
        "join_session": ({"sessionId": "fz", "role": "participant"}, ("sessionId",)),
        "leave_session": ({"sessionId": "fz"}, ()),
        "edit": (
            {"sessionId": "fz", "operation": "insert", "position": 0, "content": "x", "version": 0},
            ("operation", "position", "version"),
        ),
        "cursor": ({"sessionId": "fz", "position": 0}, ("position",)),
        "snapshot": ({"sessionId": "fz"}, ()),
    },
}

# A value of each JSON type; "wrong type" picks one that is not the field's own.
_SAMPLES: list[Any] = ["7", 7, 7.5, True, None, [], {}, [1, "a"], {"k": 1}]
_NULLABLE = {"beforeSeq", "sessionId"}  # optional fields that accept an explicit null
_OUT_OF_RANGE: dict[str, list[Any]] = {
    "content": ["", "x" * 4001],
    "messageType": ["html", "TEXT"],
    "limit": [0, 101, -1],
    "beforeSeq": [-1],
    "metrics": [[], ["engagement", "nope"], ["a", "b", "c", "d"]],
    "sessionId": ["", "s" * 129],
    "role": ["owner", ""],
    "operation": ["replace", ""],
    "position": [-1],
    "version": [-5],
    "length": [0, -3],
    "isTyping": [],
}


class Fuzzer:
    def __init__(self, endpoint: str, seed: int) -> None:
        self.endpoint = endpoint
        self.rng = random.Random(seed)
        self.types = CLIENT_TYPES[endpoint]
        self._makers: list[Callable[[], Bad]] = [
            self.not_json,
            self.not_an_object,
            self.unknown_type,
            self.other_endpoints_type,
            self.wrong_type,
            self.missing_field,
            self.out_of_range,
            self.lone_surrogate,
            self.deep,
            self.bad_envelope,
            self.binary,
            self.out_of_order,
        ]

    def next(self) -> Bad:
        return self.rng.choice(self._makers)()

    def oversized(self, limit: int) -> Bad:
        pad = "x" * (limit + self.rng.randint(1, 4096))
        frame = {"type": self.rng.choice(self.types), "id": self._id(), "data": {"content": pad}}
        return Bad(json.dumps(frame), frozenset({"too_large"}), "oversized")

    # --- the kinds of bad ----------------------------------------------------------------
    def not_json(self) -> Bad:
        type_, data, _ = self._valid()
        good = json.dumps(self._frame(type_, data))
        choices = [
            good[: self.rng.randint(1, max(len(good) - 1, 1))],  # truncated
            good.replace('"', "'", 1),
            good + "}",
            "{" + self._garbage(),
            "NaN",
            '{"type":"x","data":{"n":Infinity}}',
            "",
            "   ",
            "{,}",
        ]
        text = self.rng.choice(choices)
        try:
            json.loads(text, parse_constant=_no_constants)
        except ValueError:
            return Bad(text, frozenset({"invalid_json"}), "not-json")
        return self.not_json()  # by chance still JSON: draw again

    def not_an_object(self) -> Bad:
        value = self.rng.choice([[], [1], "message", 5, None, True, [{"type": "message"}]])
        return Bad(json.dumps(value), frozenset(SCHEMA), "not-an-object")

    def unknown_type(self) -> Bad:
        name = self.rng.choice(["", "Message", "MESSAGE", "msg", "edit ", "ping2", self._garbage()])
        frame = {"type": name, "id": self._id(), "data": {}}
        return Bad(json.dumps(frame), frozenset({"unknown_type"}), "unknown-type")

    def other_endpoints_type(self) -> Bad:
        others = [t for e, ts in CLIENT_TYPES.items() if e != self.endpoint for t in ts]
        name = self.rng.choice([*others, *SERVER_ONLY])
        if name in self.types:  # shared names (none today) would be valid here
            return self.unknown_type()
        frame = {"type": name, "id": self._id(), "data": {}}
        return Bad(json.dumps(frame), frozenset({"unknown_type"}), "foreign-type")

    def wrong_type(self) -> Bad:
        type_, data, _ = self._valid()
        field = self.rng.choice(list(data))
        data[field] = self._wrong_value(data[field], nullable=field in _NULLABLE)
        return Bad(json.dumps(self._frame(type_, data)), self._codes(type_), "wrong-type")

    def missing_field(self) -> Bad:
        type_, data, required = self._valid()
        if not required:
            return self.wrong_type()
        del data[self.rng.choice(required)]
        return Bad(json.dumps(self._frame(type_, data)), self._codes(type_), "missing-field")

    def out_of_range(self) -> Bad:
        type_, data, _ = self._valid()
        # (an edit's content has no length limit of its own: the document cap applies)
        fields = [f for f in data if _OUT_OF_RANGE.get(f) and (type_, f) != ("edit", "content")]
        if not fields:
            return self.wrong_type()
        field = self.rng.choice(fields)
        data[field] = self.rng.choice(_OUT_OF_RANGE[field])
        return Bad(json.dumps(self._frame(type_, data)), self._codes(type_), "out-of-range")

    def lone_surrogate(self) -> Bad:
        type_, data, _ = self._valid()
        lone = self.rng.choice(["\\ud800", "\\udfff", "\\ud83d", "x\\ude00y"])
        frame = self._frame(type_, data)
        where = self.rng.choice(["id", "type", "data", "extra"])
        text = json.dumps(frame)
        if where == "id":
            text = text.replace(f'"id": "{frame["id"]}"', f'"id": "{lone}"')
        elif where == "type":
            text = text.replace(f'"type": "{type_}"', f'"type": "{type_}{lone}"')
        elif where == "extra":
            text = text[:-1] + f', "note": "{lone}"}}'
        else:
            strings = [k for k, v in data.items() if isinstance(v, str)]
            if strings:
                k = self.rng.choice(strings)
                text = text.replace(f'"{k}": "{data[k]}"', f'"{k}": "{data[k]}{lone}"', 1)
            else:
                text = text.replace('"data": {', f'"data": {{"{lone}": 1, ', 1)
        return Bad(text, frozenset(SCHEMA), "lone-surrogate")

    def deep(self) -> Bad:
        depth = self.rng.choice([200, 1500, 5000, 20000])
        inner = "[" * depth + "]" * depth
        type_ = self.rng.choice(self.types)
        text = f'{{"type": "{type_}", "id": "{self._id()}", "data": {inner}}}'
        if self.rng.random() < 0.3:
            text = "[" * depth + "]" * depth  # the whole frame
        return Bad(text, frozenset(SCHEMA), "deep")

    def bad_envelope(self) -> Bad:
        type_, data, _ = self._valid()
        frame: dict[str, Any] = self._frame(type_, data)
        broken = self.rng.choice(["id-type", "id-long", "id-empty", "type-type", "no-type"])
        if broken == "id-type":
            frame["id"] = self._wrong_value("x", nullable=True)  # no id at all is fine
        elif broken == "id-long":
            frame["id"] = "i" * 65
        elif broken == "id-empty":
            frame["id"] = ""
        elif broken == "type-type":
            frame["type"] = self.rng.choice([5, None, ["message"], {"t": 1}])
        else:
            del frame["type"]
        return Bad(json.dumps(frame), frozenset(SCHEMA), "bad-envelope")

    def binary(self) -> Bad:
        raw = self.rng.randbytes(self.rng.randint(0, 64))
        return Bad(raw, frozenset(SCHEMA), "binary")

    def out_of_order(self) -> Bad:
        """Well formed, but not now: the connection's state refuses it."""
        choices: list[tuple[dict[str, Any], set[str]]] = [
            ({"type": "auth", "token": "whatever", "contextId": "c"}, {"invalid_message"}),
            ({"type": "refresh", "token": "not-a-token"}, {"unauthenticated"}),
        ]
        if self.endpoint == "collaboration":
            sid = self.rng.choice(["never-joined", "other"])
            choices += [
                ({"type": "leave_session", "data": {"sessionId": sid}}, {"not_found"}),
                ({"type": "snapshot", "data": {"sessionId": sid}}, {"not_found"}),
                ({"type": "cursor", "data": {"sessionId": sid, "position": 0}}, {"not_found"}),
                (
                    {
                        "type": "edit",
                        "data": {"sessionId": "fz", "operation": "insert", "position": 0}
                        | {"content": "x", "version": 10**9},
                    },
                    {"version_mismatch"},
                ),
                (
                    {
                        "type": "edit",
                        "data": {"sessionId": "fz", "operation": "delete", "position": 10**6}
                        | {"length": 1, "version": 0},
                    },
                    {"invalid_message", "version_mismatch"},
                ),
                (
                    {"type": "join_session", "data": {"sessionId": "fz2", "role": "host"}},
                    {"forbidden"},
                ),
            ]
        if self.endpoint == "chat":
            choices.append(
                ({"type": "history", "data": {"before": "not a time"}}, {"invalid_message"})
            )
        frame, codes = self.rng.choice(choices)
        frame = {**frame, "id": self._id()}
        return Bad(json.dumps(frame), frozenset(codes), "out-of-order")

    # --- helpers --------------------------------------------------------------------------
    def _valid(self) -> tuple[str, dict[str, Any], tuple[str, ...]]:
        type_ = self.rng.choice(self.types)
        data, required = VALID[self.endpoint][type_]
        return type_, dict(data), required

    def _frame(self, type_: str, data: dict[str, Any]) -> dict[str, Any]:
        return {"type": type_, "id": self._id(), "data": data}

    def _codes(self, type_: str) -> frozenset[str]:
        return frozenset(EDIT_REFUSALS if type_ == "edit" else SCHEMA)

    def _wrong_value(self, value: Any, nullable: bool = False) -> Any:
        def kind(v: Any) -> str:
            if isinstance(v, bool):
                return "bool"
            if isinstance(v, int | float):
                return "number"
            return type(v).__name__

        # null is the right type for a field that may be left out (sessionId, beforeSeq)
        wrong = [s for s in _SAMPLES if kind(s) != kind(value) and not (nullable and s is None)]
        return self.rng.choice(wrong)

    def _id(self) -> str:
        return f"f{self.rng.getrandbits(40):x}"

    def _garbage(self) -> str:
        alphabet = 'abc{}[]":,\\ \n\t\u00e9\u4e2d\U0001f600'
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(1, 30)))


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # Python's json reads NaN and Infinity; JSON does not
