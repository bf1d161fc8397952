"""The chat endpoint's own rules: messages go to the chat service as durable commands, typing is
live only, history and presence are requests to the chat service.

Delivery: each socket is a ``ChatMember`` of its room's live subject (joined with the room's log
subject, so the fan-out keeps the room's ``seq`` order); its ``HoldGate`` keeps the room's
frames while ``connected``, ``presence`` and the recovery after ``lastSeq`` go out, then hands
over the newer ones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import msgspec

from services.gateway.connection import Authed, Reply
from services.gateway.fanout import SocketReceiver
from services.gateway.holdgate import HoldGate
from services.gateway.parts import Parts
from services.gateway.session import Handled, connected_text, error_text, frame_text
from services.gateway.typing_state import TypingTracker
from shared import subjects, tasks
from shared.auth import Identity
from shared.bus.port import Unavailable
from shared.errors import (
    CLOSE_SERVICE_RESTART,
    InvalidMessage,
    Refusal,
    ServiceUnavailable,
    UnknownType,
)
from shared.logs import get_logger
from shared.schemas.commands import (
    Connection,
    HistoryReply,
    HistoryRequest,
    PostMessage,
    PresenceChange,
    PresenceReply,
)
from shared.schemas.frames import (
    ChatAckData,
    HistoryData,
    PresenceData,
    RecoveredData,
    TypingData,
    UserData,
)
from shared.schemas.wire import ChatMessageIn, ClientFrame, HistoryIn, TypingIn, encode
from shared.timefmt import parse_ts

__all__ = ["ChatEndpoint", "ChatMember"]

log = get_logger(__name__)
_history_decoder = msgspec.json.Decoder(HistoryReply)
_presence_decoder = msgspec.json.Decoder(PresenceReply)
UNAVAILABLE = "the chat service is unavailable; re-send later with the same id"


class ChatMember(SocketReceiver):
    """One socket in one room: the room's frames pass its gate."""

    __slots__ = ("gate", "present")

    def __init__(self, authed: Authed, limit: int) -> None:
        super().__init__(authed)
        self.gate = HoldGate(authed.conn.push, authed.slow_consumer, limit)
        self.present = False  # announced to presence, so heartbeats list it

    def offer(
        self, text: str, seq: int | None, droppable: bool, lazy: bool, headers: Mapping[str, str]
    ) -> None:
        self.gate.offer(text, seq, droppable, lazy)

    def break_stream(self, reason: str) -> None:
        self.authed.close(CLOSE_SERVICE_RESTART, reason)


class ChatEndpoint:
    name = "chat"

    def __init__(self, parts: Parts) -> None:
        self.settings = settings = parts.settings
        self.bus = parts.bus
        self.fanout = parts.fanout
        self.commands = parts.commands
        self.heartbeats = heartbeats = parts.heartbeats
        self.typing = TypingTracker(settings.typing_ttl_s)
        self.members: dict[str, ChatMember] = {}  # connection id -> its membership
        self._lapse_task: asyncio.Task[None] | None = None
        heartbeats.chat = self.present

    async def start(self) -> None:
        self._lapse_task = asyncio.create_task(self._lapse_loop(), name="typing-lapse")

    async def stop(self) -> None:
        await tasks.stop([self._lapse_task])

    def allowed(self, identity: Identity) -> bool:
        return True

    def present(self) -> list[Connection]:
        """The sockets the chat service was told of (for the heartbeat)."""
        return [m.authed.ref() for m in self.members.values() if m.present]

    # --- open / close ---------------------------------------------------------------------
    async def on_open(self, authed: Authed, last_seq: int | None) -> None:
        ctx = authed.context_id
        member = self.members[authed.id] = ChatMember(authed, self.settings.outbound_queue)
        member.gate.hold()  # room frames wait until connected/presence/recovery are out
        await self.fanout.join(subjects.chat_live(ctx), member, subjects.chat_messages(ctx))
        await authed.reply(connected_text(authed))  # needs nothing from the chat service
        users = await self._presence_open(member)
        await authed.reply(frame_text("presence", PresenceData(users)))
        replayed = last_seq
        if last_seq is not None:
            replayed = await self._recover(authed, last_seq)
            if replayed is None:  # the socket would miss messages: it recovers later instead
                reason = "recovery unavailable; reconnect with lastSeq"
                await authed.reply(Reply(None, lambda: authed.close(CLOSE_SERVICE_RESTART, reason)))
                return
        await authed.reply(Reply(None, lambda: member.gate.release(replayed)))

    async def _presence_open(self, member: ChatMember) -> list[UserData]:
        authed = member.authed
        member.present = True
        change = PresenceChange(
            self.heartbeats.gateway_id, "open", authed.ref(), self.heartbeats.next_seq()
        )
        try:
            reply = await self.bus.request(
                subjects.RPC_CHAT_PRESENCE, encode(change), timeout=self.settings.command_timeout_s
            )
            return _presence_decoder.decode(reply).users
        except (Unavailable, msgspec.DecodeError) as exc:
            # The heartbeat will register this socket once the chat service is back.
            log.warning("presence unavailable", extra={"error": repr(exc)})
            room = self.fanout.receivers(subjects.chat_live(authed.context_id))
            mine = {r.user_id: r.authed.user_name for r in room if isinstance(r, ChatMember)}
            return [UserData(u, n) for u, n in sorted(mine.items())]

    async def _recover(self, authed: Authed, last_seq: int) -> int | None:
        """Replay what the socket missed; the last seq replayed, or None when that failed."""
        req = HistoryRequest(authed.context_id, afterSeq=last_seq, cap=self.settings.recovery_max)
        try:
            reply = await self._history_rpc(req)
        except Refusal as exc:
            await authed.reply(error_text(exc))
            return None
        if reply.truncated:
            await authed.reply(frame_text("recovered", RecoveredData(0, truncated=True)))
            return reply.lastSeq
        for m in reply.messages:
            await authed.reply(frame_text("message", m))
        await authed.reply(frame_text("recovered", RecoveredData(len(reply.messages))))
        return reply.messages[-1].seq if reply.messages else last_seq

    async def on_close(self, authed: Authed) -> None:
        ctx, user = authed.context_id, authed.user_id
        live = subjects.chat_live(ctx)
        member = self.members.pop(authed.id, None)
        if member is None:
            return
        member.gate.closed = True
        await self.fanout.leave(live, member)
        others = self.fanout.receivers(live)
        if not any(r.user_id == user for r in others) and self.typing.stop(ctx, user):
            await self._typing_broadcast(ctx, user, authed.user_name, False)
        if member.present and self.bus.connected:
            member.present = False
            change = PresenceChange(
                self.heartbeats.gateway_id, "close", authed.ref(), self.heartbeats.next_seq()
            )
            try:
                await self.bus.publish(subjects.RPC_CHAT_PRESENCE, encode(change))
            except Unavailable as exc:  # the next heartbeat no longer lists the socket
                log.warning("presence close not sent", extra={"error": str(exc)})

    # --- frames ---------------------------------------------------------------------------
    def handle(self, authed: Authed, frame: ClientFrame) -> Handled:
        match frame.data:
            case ChatMessageIn():
                return self._post(authed, frame, frame.data)
            case TypingIn():
                return self._typing(authed, frame.data)
            case HistoryIn():
                return self._history(authed, frame, frame.data)
        raise UnknownType(f"{frame.type!r} is not handled here")

    async def _post(self, authed: Authed, frame: ClientFrame, data: ChatMessageIn) -> str | None:
        ticket = self.commands.ticket()
        cmd = PostMessage(
            requestId=ticket.request_id,
            contextId=authed.context_id,
            origin=ticket.origin(authed),
            content=data.content,
            messageType=data.messageType,
            clientId=frame.id,
            deadline=ticket.deadline,
        )
        ok = await self.commands.call(
            subjects.chat_commands(authed.context_id), ticket, cmd, "chat_message"
        )
        if frame.id is None:
            return None
        return frame_text("ack", ChatAckData(ok["messageId"], ok["seq"]), id=frame.id)

    async def _typing(self, authed: Authed, data: TypingIn) -> None:
        """No reply; runs in the frame's reply slot so typing frames keep their order."""
        ctx, user, name = authed.context_id, authed.user_id, authed.user_name
        if self.typing.set(ctx, user, name, data.isTyping, time.monotonic()):
            await self._typing_broadcast(ctx, user, name, data.isTyping)

    async def _typing_broadcast(self, ctx: str, user: str, name: str, typing: bool) -> None:
        frame = frame_text("typing", TypingData(user, name, typing))
        headers = {subjects.HDR_EXCEPT_USER: user, subjects.HDR_DROPPABLE: "1"}
        await self.bus.publish(subjects.chat_live(ctx), frame.encode(), headers)

    async def _lapse_loop(self) -> None:
        while True:
            await asyncio.sleep(0.25)  # a periodic timer: lapses are accurate to 250 ms
            for ctx, user, name in self.typing.lapsed(time.monotonic()):
                try:
                    await self._typing_broadcast(ctx, user, name, False)
                except Exception as exc:  # NATS away: this lapse is lost, the loop must live
                    log.warning("typing lapse not sent", extra={"error": repr(exc)})

    async def _history(self, authed: Authed, frame: ClientFrame, data: HistoryIn) -> str:
        before_ms = None
        if data.before is not None:
            try:
                before_ms = parse_ts(data.before)
            except ValueError:
                raise InvalidMessage("before must be an ISO 8601 timestamp") from None
        req = HistoryRequest(authed.context_id, data.limit, before_ms, data.beforeSeq)
        reply = await self._history_rpc(req)
        return frame_text("history", HistoryData(reply.messages, reply.hasMore), id=frame.id)

    async def _history_rpc(self, req: HistoryRequest) -> HistoryReply:
        try:
            raw = await self.bus.request(
                subjects.RPC_CHAT_HISTORY, encode(req), timeout=self.settings.command_timeout_s
            )
            return _history_decoder.decode(raw)
        except (Unavailable, msgspec.DecodeError):
            raise ServiceUnavailable(UNAVAILABLE) from None
