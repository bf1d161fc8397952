"""The analytics endpoint: live metrics of one context for instructors, and learning-event ingest.

Sockets (``/api/analytics/ws``): ``subscribe`` asks the aggregator for the current values first
(``RPC_METRICS_CURRENT``; if it does not answer, the frame gets ``unavailable`` and is not
applied), then answers ``subscribed`` followed at once by one ``metric_update`` per metric. Live
updates arrive on the context's metrics subject, encoded once by the aggregator; the hub hands each
frame to this socket's filter, which passes only subscribed metrics (``AG-Metric`` header) and only
frames newer than what the socket already has (``AG-Version``). Frames for a metric whose
subscription is still waiting for its current value are held and replayed after it, so an update
computed in between is neither lost nor sent before the older current value. Analytics sockets
are not presence.

HTTP (``POST /api/analytics/events``): other systems report assessment submissions; the event is
appended to the log (``Nats-Msg-Id`` from ``Idempotency-Key``), and the aggregator picks it up
like any other event.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec
import nats.errors
from msgspec import Meta, Struct
from nats.aio.client import Client as NATS

from services.gateway.connection import Conn, Followed
from services.gateway.hub import Hub
from services.gateway.session import Reply, connected_text, error_text, frame_text
from shared import subjects
from shared.auth import AuthFailure, Identity, TokenVerifier
from shared.config import Settings
from shared.errors import AGError
from shared.logs import get_logger
from shared.schemas.analytics import CurrentReply, CurrentRequest, metric_update_data
from shared.schemas.events import AssessmentSubmitted, encode_event
from shared.schemas.wire import ClientFrame, MetricsIn, encode, encode_frame, is_json
from shared.timefmt import ms_to_ts, now_ms

__all__ = ["AnalyticsEndpoint", "AssessmentIn"]

log = get_logger(__name__)
_current_decoder = msgspec.json.Decoder(CurrentReply)
UNAVAILABLE = "the analytics service is unavailable; re-send later with the same id"
INGEST_ROLES = ("instructor", "admin", "service")


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


@dataclass(slots=True)
class _Subscription:
    """One socket's metric subscriptions (touched only on the event loop)."""

    live: set[str] = field(default_factory=set)
    floor: dict[str, int] = field(default_factory=dict)  # newest version sent, per metric
    pending: Counter[str] = field(default_factory=Counter)  # subscribes awaiting their value
    held: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    generation: Counter[str] = field(default_factory=Counter)  # bumped by unsubscribe

    def accept(self, headers: Mapping[str, str], text: str) -> bool:
        metric = headers.get(subjects.HDR_METRIC)
        if metric is None:
            return False
        try:
            version = int(headers.get(subjects.HDR_VERSION, "0"))
        except ValueError:
            version = 0
        if self.pending[metric]:
            self.held.setdefault(metric, []).append((version, text))
            return False
        if metric in self.live and version > self.floor.get(metric, -1):
            self.floor[metric] = version
            return True
        return False


class AnalyticsEndpoint:
    name = "analytics"

    def __init__(self, settings: Settings, hub: Hub, nc: NATS, verifier: TokenVerifier) -> None:
        self.settings = settings
        self.hub = hub
        self.nc = nc
        self.js = nc.jetstream()
        self.verifier = verifier
        self._subs: dict[str, _Subscription] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self._subs.clear()

    def allowed(self, identity: Identity) -> bool:
        return identity.has_role("instructor", "admin")

    # --- open / close ---------------------------------------------------------------------
    async def on_open(self, conn: Conn, last_seq: int | None) -> None:
        assert conn.identity is not None and conn.context_id is not None
        sub = self._subs[conn.id] = _Subscription()
        await self.hub.join(subjects.metrics_live(conn.context_id), conn, accept=sub.accept)
        await conn.reply(connected_text(conn))

    async def on_close(self, conn: Conn) -> None:
        assert conn.context_id is not None
        await self.hub.leave(subjects.metrics_live(conn.context_id), conn)
        self._subs.pop(conn.id, None)

    # --- frames ---------------------------------------------------------------------------
    def handle(self, conn: Conn, frame: ClientFrame) -> Reply:
        if not isinstance(frame.data, MetricsIn):
            raise AGError("unknown_type", f"{frame.type!r} is not handled here")
        metrics: list[str] = list(dict.fromkeys(frame.data.metrics))
        sub = self._subs[conn.id]
        if frame.type == "unsubscribe":
            for m in metrics:
                sub.generation[m] += 1  # an in-flight subscribe of m must not activate it
                sub.live.discard(m)
            return frame_text("unsubscribed", {"metrics": metrics}, id=frame.id)
        for m in metrics:
            sub.pending[m] += 1
        generations = {m: sub.generation[m] for m in metrics}
        return self._subscribe(conn, sub, frame, metrics, generations)

    async def _subscribe(
        self,
        conn: Conn,
        sub: _Subscription,
        frame: ClientFrame,
        metrics: list[str],
        generations: dict[str, int],
    ) -> str | Followed:
        assert conn.context_id is not None
        try:
            current = await self._current(conn.context_id, metrics)
        except AGError as exc:
            for m in metrics:
                self._settle(sub, m)
            return error_text(exc, frame.id)
        values = current.values.get(conn.context_id, {})

        def activate() -> None:
            # Runs in reply order, right after `subscribed` is queued: current values first,
            # then whatever newer update arrived while we waited.
            stamp = ms_to_ts(current.now)
            for m in metrics:
                held = self._settle(sub, m)
                if sub.generation[m] != generations[m] or m not in values:
                    continue
                sub.live.add(m)
                data = metric_update_data(m, values[m], stamp)
                conn.push(encode_frame("metric_update", stamp, data).decode())
                sub.floor[m] = max(sub.floor.get(m, -1), current.version)
                for version, text in held:
                    if version > sub.floor[m]:
                        sub.floor[m] = version
                        conn.push(text)

        return frame_text("subscribed", {"metrics": metrics}, id=frame.id), activate

    @staticmethod
    def _settle(sub: _Subscription, metric: str) -> list[tuple[int, str]]:
        """One subscribe of ``metric`` is done: the frames held for it so far."""
        sub.pending[metric] -= 1
        if sub.pending[metric] <= 0:
            del sub.pending[metric]
            return sub.held.pop(metric, [])
        held = sub.held.get(metric, [])
        sub.held[metric] = []
        return held

    async def _current(self, context_id: str, metrics: list[str]) -> CurrentReply:
        req = CurrentRequest(contextIds=[context_id], metrics=metrics)  # type: ignore[arg-type]
        try:
            msg = await self.nc.request(
                subjects.RPC_METRICS_CURRENT, encode(req), timeout=self.settings.command_timeout_s
            )
            reply = _current_decoder.decode(msg.data)
        except (TimeoutError, nats.errors.Error, msgspec.DecodeError) as exc:
            log.warning("metrics unavailable", extra={"error": repr(exc)})
            raise AGError("unavailable", UNAVAILABLE) from None
        if reply.error is not None:
            log.warning("metrics failed", extra={"error": reply.error})
            raise AGError("unavailable", UNAVAILABLE)
        return reply

    # --- HTTP ingest ----------------------------------------------------------------------
    async def ingest(
        self, authorization: str | None, idempotency_key: str | None, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        """``POST /api/analytics/events``: (HTTP status, JSON body)."""
        identity = self._bearer(authorization)
        if identity is None:
            return 401, _problem("unauthenticated", "a valid bearer token is required")
        if not identity.has_role(*INGEST_ROLES):
            return 403, _problem("forbidden", "role not allowed to report learning events")
        try:
            data = _assessment_decoder.decode(body)
        except msgspec.ValidationError as exc:
            if not is_json(body):  # '{} junk': refused as an object before the junk was seen
                return 400, _problem("invalid_json", "body is not valid JSON")
            return 400, _problem("invalid_message", str(exc))
        except msgspec.DecodeError:
            return 400, _problem("invalid_json", "body is not valid JSON (or has lone surrogates)")
        if data.score > data.maxScore:
            return 400, _problem("invalid_message", "score must not exceed maxScore")
        if not identity.allows(data.contextId):
            return 403, _problem("forbidden", "token does not allow this context")
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= 128:
            return 400, _problem("invalid_message", "Idempotency-Key must be 1-128 characters")
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
            ack = await self.js.publish(
                subjects.learning(data.contextId, "assessment_submitted"),
                encode_event(event),
                headers={"Nats-Msg-Id": msg_id},
                timeout=self.settings.command_timeout_s,
            )
        except (TimeoutError, nats.errors.Error) as exc:
            log.warning("learning event not appended", extra={"error": repr(exc)})
            return 503, _problem("unavailable", "the event log is unavailable; retry later")
        return 202, {"status": "accepted", "seq": ack.seq, "duplicate": bool(ack.duplicate)}

    def _bearer(self, authorization: str | None) -> Identity | None:
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        try:
            return self.verifier.verify(token.strip(), time.time())
        except AuthFailure as exc:
            log.info("ingest auth failed", extra={"reason": exc.reason})
            return None


def _problem(code: str, message: str) -> dict[str, Any]:
    return {"code": code, "error": message}
