"""``POST /api/analytics/events``: other systems report assessment submissions.

The event is appended to the log (``Nats-Msg-Id`` from ``Idempotency-Key``, so a retry within
``AG_DEDUP_WINDOW_S`` stores once) and the aggregator picks it up like any other event. Refusals
are ``Refusal``s like everywhere else; the HTTP status follows their protocol code.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from shared import subjects
from shared.auth import AuthFailure, Identity, TokenVerifier
from shared.bus.port import Bus, Unavailable
from shared.config import Settings
from shared.errors import (
    Forbidden,
    InvalidJson,
    InvalidMessage,
    Refusal,
    ServiceUnavailable,
    Unauthenticated,
    protocol,
)
from shared.logs import get_logger
from shared.schemas.events import AssessmentSubmitted, encode_event
from shared.schemas.wire import is_json
from shared.timefmt import now_ms

__all__ = ["AssessmentIn", "Ingest", "http_status"]

log = get_logger(__name__)
INGEST_ROLES = ("instructor", "admin", "service")
_STATUS = {
    "invalid_json": 400,
    "invalid_message": 400,
    "unauthenticated": 401,
    "forbidden": 403,
    "not_found": 404,
    "too_large": 413,
    "rate_limited": 429,
    "unavailable": 503,
}


def http_status(code: str) -> int:
    """The HTTP status of a protocol error code (HTTP endpoints answer ``{"code","error"}``)."""
    return _STATUS.get(code, 500)


class AssessmentIn(Struct, forbid_unknown_fields=True):
    """Body of ``POST /api/analytics/events``; no coercion, unknown fields refused."""

    type: Literal["assessment_submitted"]
    contextId: Annotated[str, Meta(min_length=1, max_length=256)]
    userId: Annotated[str, Meta(min_length=1, max_length=256)]
    assessmentId: Annotated[str, Meta(min_length=1, max_length=256)]
    score: Annotated[float, Meta(ge=0)]
    maxScore: Annotated[float, Meta(gt=0)]
    completed: bool = True


_assessment_decoder = msgspec.json.Decoder(AssessmentIn)


class Ingest:
    def __init__(self, settings: Settings, bus: Bus, verifier: TokenVerifier) -> None:
        self.settings = settings
        self.bus = bus
        self.verifier = verifier

    async def post(
        self, authorization: str | None, idempotency_key: str | None, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON body)."""
        try:
            return 202, await self._store(authorization, idempotency_key, body)
        except Refusal as exc:
            err = protocol(exc)
            return http_status(err.code), {"code": err.code, "error": err.message}

    async def _store(
        self, authorization: str | None, idempotency_key: str | None, body: bytes
    ) -> dict[str, Any]:
        identity = self._bearer(authorization)
        if not identity.has_role(*INGEST_ROLES):
            raise Forbidden("role not allowed to report learning events")
        try:
            data = _assessment_decoder.decode(body)
        except msgspec.ValidationError as exc:
            if not is_json(body):  # '{} junk': refused as an object before the junk was seen
                raise InvalidJson("body is not valid JSON") from None
            raise InvalidMessage(str(exc)) from None
        except msgspec.DecodeError:
            raise InvalidJson("body is not valid JSON (or has lone surrogates)") from None
        if data.score > data.maxScore:
            raise InvalidMessage("score must not exceed maxScore")
        if not identity.allows(data.contextId):
            raise Forbidden("token does not allow this context")
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= 128:
            raise InvalidMessage("Idempotency-Key must be 1-128 characters")
        event = AssessmentSubmitted(
            contextId=data.contextId,
            ts=now_ms(),
            userId=data.userId,
            assessmentId=data.assessmentId,
            score=data.score,
            maxScore=data.maxScore,
            completed=data.completed,
        )
        key = idempotency_key or uuid.uuid4().hex
        msg_id = f"learning:{subjects.token(identity.user_id)}:{key}"
        try:
            done = await self.bus.append(
                subjects.learning(data.contextId, "assessment_submitted"),
                encode_event(event),
                msg_id=msg_id,
                timeout=self.settings.command_timeout_s,
            )
        except Unavailable as exc:
            log.warning("learning event not appended", extra={"error": str(exc)})
            raise ServiceUnavailable("the event log is unavailable; retry later") from None
        return {"status": "accepted", "seq": done.seq, "duplicate": done.duplicate}

    def _bearer(self, authorization: str | None) -> Identity:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("a valid bearer token is required")
        try:
            return self.verifier.verify(token.strip(), time.time())
        except AuthFailure as exc:
            log.info("ingest auth failed", extra={"reason": exc.reason})
            raise Unauthenticated("a valid bearer token is required") from None
