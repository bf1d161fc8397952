"""Live frames from the bus to the sockets that want them: subscriptions per subject, fan-out.

A gateway subscribes only to the subjects (chat rooms, metric streams, documents) it has
receivers for. A live frame arrives already encoded (the service encodes it once for every
gateway); it is decoded to text once and the same string is offered to every receiver, which
filters it cheaply from the headers (``AG-Except-User``, ``AG-Except-Conn``, its own rules).

Chat rooms (joined with ``log_subject``) keep their order here, on the path to the sockets: a
frame's ``AG-Seq`` must be the next one handed out; an older one is dropped, and a jump is
filled first from the log (``services/gateway/ordering.py``). The room is re-checked against the
log when a chat service starts (``ag.ctl.chat.ready``) and when this gateway's connection to NATS
comes back. A gap that cannot be filled closes the room's sockets with 1012.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from services.gateway import metrics
from services.gateway.connection import Authed
from services.gateway.ordering import RoomOrder
from shared import subjects, tasks
from shared.bus.port import Bus, Message, Subscription, Unavailable
from shared.config import Settings
from shared.eventlog import decode_logged
from shared.logs import get_logger
from shared.schemas.events import ChatMessagePosted
from shared.schemas.wire import message_frame

__all__ = ["FanOut", "Receiver", "SocketReceiver"]

log = get_logger(__name__)

EXCEPT_USER = subjects.HDR_EXCEPT_USER
EXCEPT_CONN = subjects.HDR_EXCEPT_CONN
DROPPABLE = subjects.HDR_DROPPABLE
LAZY = subjects.HDR_LAZY
SEQ = subjects.HDR_SEQ
LOG_SEQ = subjects.HDR_LOG_SEQ


class Receiver(Protocol):
    """Something that takes a subject's live frames for one socket."""

    @property
    def conn_id(self) -> str: ...
    @property
    def user_id(self) -> str: ...
    def offer(
        self, text: str, seq: int | None, droppable: bool, lazy: bool, headers: Mapping[str, str]
    ) -> None: ...
    def break_stream(self, reason: str) -> None:
        """The stream cannot be kept whole for this socket (it closes, 1012)."""
        ...


class SocketReceiver:
    """A receiver for one authenticated socket (the endpoints' members derive from it)."""

    __slots__ = ("authed",)

    def __init__(self, authed: Authed) -> None:
        self.authed = authed

    @property
    def conn_id(self) -> str:
        return self.authed.id

    @property
    def user_id(self) -> str:
        return self.authed.user_id

    def break_stream(self, reason: str) -> None:
        return None  # a stream that is not ordered has nothing to break


@dataclass(slots=True)
class _Ordered:
    log_subject: str  # where the room's messages are in the log
    order: RoomOrder


class FanOut:
    def __init__(self, settings: Settings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        self._members: defaultdict[str, dict[tuple[str, int], Receiver]] = defaultdict(dict)
        self._subs: dict[str, Subscription] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._ordered: dict[str, _Ordered] = {}  # live subject -> its order (chat rooms)
        self._ready_sub: Subscription | None = None
        self._resync: asyncio.Task[None] | None = None
        self._resync_again = False

    async def start(self) -> None:
        self._ready_sub = await self.bus.subscribe(subjects.CHAT_READY, self._on_chat_ready)
        self.bus.on_reconnect(self._reconnected)

    async def stop(self) -> None:
        await tasks.stop([self._resync])
        for sub in [*self._subs.values(), *([self._ready_sub] if self._ready_sub else [])]:
            await sub.unsubscribe()
        self._subs.clear()

    # --- membership -----------------------------------------------------------------------
    async def join(self, subject: str, receiver: Receiver, log_subject: str | None = None) -> None:
        """Offer ``subject``'s frames to ``receiver``. With ``log_subject`` (chat), frames with a
        seq are handed out in order and gaps are filled from that subject of the log."""
        if subject in self._subs:
            # Already subscribed: nothing to wait for, so no lock (a room's joins queued on
            # it cost O(waiters) each in asyncio, a burst of joins O(n²)). ``leave`` drops the
            # subscription before it awaits anything, so a join that sees it here is safe.
            self._members[subject][(receiver.conn_id, id(receiver))] = receiver
            return
        async with self._locks[subject]:
            self._members[subject][(receiver.conn_id, id(receiver))] = receiver
            if subject not in self._subs:
                self._subs[subject] = await self.bus.subscribe(subject, self._on_live)
                if log_subject is not None:
                    # Subscribed first, then where the log stands: nothing falls in between.
                    order = await self._baseline(log_subject)
                    self._ordered[subject] = _Ordered(log_subject, order)

    async def leave(self, subject: str, receiver: Receiver) -> None:
        async with self._locks[subject]:
            members = self._members.get(subject)
            if members is None:
                return
            members.pop((receiver.conn_id, id(receiver)), None)
            if not members:
                del self._members[subject]
                self._ordered.pop(subject, None)
                sub = self._subs.pop(subject, None)
                if sub is not None:
                    await sub.unsubscribe()

    def receivers(self, subject: str) -> list[Receiver]:
        return list(self._members.get(subject, {}).values())

    @property
    def subjects(self) -> int:
        return len(self._subs)

    # --- delivery -------------------------------------------------------------------------
    async def _on_live(self, msg: Message) -> None:
        if not self._members.get(msg.subject):
            return
        headers = msg.headers
        text = msg.data.decode()  # once per broadcast, not per socket
        seq = int(headers[SEQ]) if SEQ in headers else None
        ordered = self._ordered.get(msg.subject) if seq is not None else None
        if ordered is None or seq is None:
            self._fan_out(msg.subject, text, headers, seq)
            return
        log_seq = int(headers[LOG_SEQ]) if LOG_SEQ in headers else None
        async with self._locks[msg.subject]:
            await self._deliver_in_order(msg.subject, ordered, seq, log_seq, text, headers)

    def _fan_out(
        self, subject: str, text: str, headers: Mapping[str, str], seq: int | None
    ) -> None:
        members = self._members.get(subject)
        if not members:
            return
        except_user = headers.get(EXCEPT_USER)
        except_conn = headers.get(EXCEPT_CONN)
        droppable = DROPPABLE in headers
        lazy = droppable or LAZY in headers  # ephemeral frames may wait for company too
        sent = 0
        for receiver in list(members.values()):
            if except_user is not None and receiver.user_id == except_user:
                continue
            if except_conn is not None and receiver.conn_id == except_conn:
                continue
            receiver.offer(text, seq, droppable, lazy, headers)
            sent += 1
        metrics.BROADCAST_FANOUT.observe(sent)

    # --- ordered rooms (chat) -------------------------------------------------------------
    async def _baseline(self, log_subject: str) -> RoomOrder:
        try:
            last = (await self.bus.last([log_subject])).get(log_subject)
        except Unavailable as exc:  # the first frame sets it instead
            log.warning("room position unknown", extra={"error": str(exc)})
            return RoomOrder()
        if last is None:
            return RoomOrder(0, 0)
        ev = decode_logged(last.data, last.seq, last.subject, "gateway")
        if not isinstance(ev, ChatMessagePosted):
            return RoomOrder()
        return RoomOrder(ev.seq, last.seq)

    async def _deliver_in_order(
        self,
        subject: str,
        ordered: _Ordered,
        seq: int,
        log_seq: int | None,
        text: str,
        headers: Mapping[str, str],
    ) -> None:
        """Hand out one seq'd frame: drop it if old, fill the gap before it first (the caller
        holds the room's lock, so frames and fills never interleave)."""
        verdict = ordered.order.check(seq)
        if verdict == "old":
            metrics.ORDER.labels("dropped").inc()
            return
        if verdict == "gap" and not await self._fill(subject, ordered, seq):
            ordered.order.advance(seq, log_seq)  # every socket was closed: start afresh here
            return
        self._fan_out(subject, text, headers, seq)
        ordered.order.advance(seq, log_seq)

    async def _fill(self, subject: str, ordered: _Ordered, upto: int) -> bool:
        """Hand out the messages between the room's position and ``upto`` (exclusive), read
        back from the log. False if that cannot be done: every socket of the room is then
        closed with 1012 and recovers with ``lastSeq`` (docs/protocol.md)."""
        order = ordered.order
        need = order.missing(upto)
        if need <= self.settings.recovery_max:
            for attempt in range(4):
                found = await self._read_gap(ordered, upto)
                if found is not None:
                    for ev, log_seq in found:
                        self._fan_out(subject, message_frame(ev).decode(), {}, ev.seq)
                        order.advance(ev.seq, log_seq)
                    metrics.ORDER.labels("filled").inc(len(found))
                    return True
                # A replica may not have the newest messages yet (direct gets on R3 streams).
                await asyncio.sleep(0.1 * (attempt + 1))
        log.warning(
            "room stream cannot be kept whole; closing its sockets",
            extra={"subject": subject, "from": order.last, "to": upto, "missing": need},
        )
        metrics.ORDER.labels("broken").inc()
        for receiver in self.receivers(subject):
            receiver.break_stream("message stream interrupted; reconnect with lastSeq")
        return False

    async def _read_gap(
        self, ordered: _Ordered, upto: int
    ) -> list[tuple[ChatMessagePosted, int]] | None:
        """The messages last+1 .. upto-1 with their stream sequences, or None if the log does
        not have them all (yet) or cannot be read."""
        order = ordered.order
        assert order.last is not None
        want = list(range(order.last + 1, upto))
        found: list[tuple[ChatMessagePosted, int]] = []
        start = order.log_seq + 1
        try:
            while len(found) < len(want):
                entries = await self.bus.read(
                    ordered.log_subject, start, limit=len(want) - len(found)
                )
                if not entries:
                    break
                for entry in entries:
                    ev = decode_logged(entry.data, entry.seq, entry.subject, "gateway")
                    if isinstance(ev, ChatMessagePosted) and order.last < ev.seq < upto:
                        found.append((ev, entry.seq))
                start = entries[-1].seq + 1
        except Unavailable as exc:
            log.warning("gap fill failed", extra={"error": str(exc)})
            return None
        return found if [ev.seq for ev, _ in found] == want else None

    async def _on_chat_ready(self, msg: Message) -> None:
        self.resync()

    async def _reconnected(self) -> None:
        # Live frames published while the link was down are lost: read them from the log.
        self.resync()

    def resync(self) -> None:
        """Check every ordered room against the log now (after a reconnect to NATS, or when a
        chat service starts): a message logged but never broadcast is handed out at once."""
        if self._resync is not None and not self._resync.done():
            self._resync_again = True
            return
        self._resync = asyncio.create_task(self._resync_rooms(), name="fanout-resync")

    async def _resync_rooms(self) -> None:
        while True:
            self._resync_again = False
            for attempt in range(20):  # JetStream may take a few seconds to come back
                try:
                    await self._resync_once()
                    break
                except Unavailable as exc:
                    log.warning("room resync failed; retrying", extra={"error": str(exc)})
                    await asyncio.sleep(min(0.25 * (attempt + 1), 2.0))
            if not self._resync_again:
                return

    async def _resync_once(self) -> None:
        rooms = {s: o.log_subject for s, o in self._ordered.items()}
        if not rooms:
            return
        lasts = await self.bus.last(list(rooms.values()))
        for subject, log_subject in rooms.items():
            last = lasts.get(log_subject)
            ev = decode_logged(last.data, last.seq, log_subject, "gateway") if last else None
            if not isinstance(ev, ChatMessagePosted):
                continue
            async with self._locks[subject]:
                ordered = self._ordered.get(subject)
                if ordered is None or ordered.order.last is None:
                    continue
                if ordered.order.check(ev.seq) != "old":
                    metrics.ORDER.labels("resynced").inc()
                    await self._fill(subject, ordered, ev.seq + 1)
