"""The analytics endpoint's own rules: live metrics of one context, for instructors.

``subscribe`` asks the aggregator for the current values first (``RPC_METRICS_CURRENT``; if it
does not answer, the frame gets ``unavailable`` and is not applied), then answers ``subscribed``
followed at once by one ``metric_update`` per metric. Live updates arrive on the context's metrics
subject, encoded once by the aggregator; each socket's ``MetricsMember`` passes only subscribed
metrics (``AG-Metric`` header) and only frames newer than what the socket has (``AG-Version``,
one ``HoldGate`` per metric). Frames for a metric whose subscription is still waiting for its
current value are held and handed over after it, so an update computed in between is neither
lost nor sent before the older current value. Analytics sockets are not presence.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import msgspec

from services.gateway.connection import Authed, Reply
from services.gateway.fanout import SocketReceiver
from services.gateway.holdgate import HoldGate
from services.gateway.parts import Parts
from services.gateway.session import Handled, connected_text, frame_text
from shared import subjects
from shared.auth import Identity
from shared.bus.port import Unavailable
from shared.errors import CLOSE_TRY_AGAIN, ServiceUnavailable, UnknownType
from shared.logs import get_logger
from shared.schemas.analytics import CurrentReply, CurrentRequest
from shared.schemas.frames import MetricsData, MetricUpdateData
from shared.schemas.wire import ClientFrame, MetricName, MetricsIn, encode, encode_frame
from shared.timefmt import ms_to_ts

__all__ = ["AnalyticsEndpoint", "MetricsMember"]

log = get_logger(__name__)
_current_decoder = msgspec.json.Decoder(CurrentReply)
UNAVAILABLE = "the analytics service is unavailable; re-send later with the same id"


class MetricsMember(SocketReceiver):
    """One socket's metric subscriptions: a gate per metric, and which ones are live."""

    __slots__ = ("gates", "live", "generation", "limit")

    def __init__(self, authed: Authed, limit: int) -> None:
        super().__init__(authed)
        self.gates: dict[str, HoldGate] = {}
        self.live: set[str] = set()
        self.generation: Counter[str] = Counter()  # bumped by unsubscribe
        self.limit = limit

    def gate(self, metric: str) -> HoldGate:
        gate = self.gates.get(metric)
        if gate is None:
            overflow = lambda: self.authed.close(CLOSE_TRY_AGAIN, "slow consumer")  # noqa: E731
            gate = self.gates[metric] = HoldGate(self.authed.conn.push, overflow, self.limit)
        return gate

    def offer(
        self, text: str, seq: int | None, droppable: bool, lazy: bool, headers: Mapping[str, str]
    ) -> None:
        metric = headers.get(subjects.HDR_METRIC)
        gate = self.gates.get(metric) if metric is not None else None
        if gate is None or (metric not in self.live and not gate.holds):
            return
        try:
            version = int(headers.get(subjects.HDR_VERSION, "0"))
        except ValueError:
            version = 0
        gate.offer(text, version)


class AnalyticsEndpoint:
    name = "analytics"

    def __init__(self, parts: Parts) -> None:
        self.settings = parts.settings
        self.bus = parts.bus
        self.fanout = parts.fanout
        self.members: dict[str, MetricsMember] = {}
        parts.heartbeats.analytics = self.watched

    def watched(self) -> list[str]:
        """The contexts this gateway has analytics sockets in (for the heartbeat)."""
        return sorted({m.authed.context_id for m in self.members.values()})

    def allowed(self, identity: Identity) -> bool:
        return identity.has_role("instructor", "admin")

    # --- open / close ---------------------------------------------------------------------
    async def on_open(self, authed: Authed, last_seq: int | None) -> None:
        member = self.members[authed.id] = MetricsMember(authed, self.settings.outbound_queue)
        await self.fanout.join(subjects.metrics_live(authed.context_id), member)
        await authed.reply(connected_text(authed))

    async def on_close(self, authed: Authed) -> None:
        member = self.members.pop(authed.id, None)
        if member is not None:
            await self.fanout.leave(subjects.metrics_live(authed.context_id), member)

    # --- frames ---------------------------------------------------------------------------
    def handle(self, authed: Authed, frame: ClientFrame) -> Handled:
        if not isinstance(frame.data, MetricsIn):
            raise UnknownType(f"{frame.type!r} is not handled here")
        metrics: list[MetricName] = list(dict.fromkeys(frame.data.metrics))
        member = self.members[authed.id]
        if frame.type == "unsubscribe":
            for m in metrics:
                member.generation[m] += 1  # an in-flight subscribe of m must not activate it
                member.live.discard(m)
            return frame_text("unsubscribed", MetricsData(metrics), id=frame.id)
        for m in metrics:
            member.gate(m).hold()  # now, in frame order: until the reply is queued
        generations = {m: member.generation[m] for m in metrics}
        return self._subscribe(member, frame, metrics, generations)

    async def _subscribe(
        self,
        member: MetricsMember,
        frame: ClientFrame,
        metrics: list[MetricName],
        generations: dict[MetricName, int],
    ) -> Reply:
        ctx = member.authed.context_id
        try:
            current = await self._current(ctx, metrics)
        except ServiceUnavailable:
            for m in metrics:
                member.gates[m].release(discard=True)
            raise
        values = current.values.get(ctx, {})

        def activate() -> None:
            # Runs in reply order, right after `subscribed` is queued: current values first,
            # then whatever newer update arrived while we waited.
            stamp = ms_to_ts(current.now)
            for m in metrics:
                gate = member.gates[m]
                if member.generation[m] == generations[m] and m in values:
                    member.live.add(m)
                    data = MetricUpdateData(m, values[m], stamp)
                    member.authed.push(encode_frame("metric_update", stamp, data).decode())
                    gate.release(current.version)
                else:  # unsubscribed meanwhile: what was kept for it goes nowhere
                    gate.release(discard=True)

        return Reply(frame_text("subscribed", MetricsData(metrics), id=frame.id), activate)

    async def _current(self, context_id: str, metrics: list[MetricName]) -> CurrentReply:
        req = CurrentRequest(contextIds=[context_id], metrics=metrics)
        try:
            raw = await self.bus.request(
                subjects.RPC_METRICS_CURRENT, encode(req), timeout=self.settings.command_timeout_s
            )
            reply = _current_decoder.decode(raw)
        except (Unavailable, msgspec.DecodeError) as exc:
            log.warning("metrics unavailable", extra={"error": repr(exc)})
            raise ServiceUnavailable(UNAVAILABLE) from None
        if reply.error is not None:
            log.warning("metrics failed", extra={"error": reply.error})
            raise ServiceUnavailable(UNAVAILABLE)
        return reply
