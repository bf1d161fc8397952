"""The chat endpoint: messages go to the chat service as durable commands; typing is live only."""

from __future__ import annotations

import asyncio
import time
import uuid

import msgspec
import nats.errors
from nats.aio.client import Client as NATS

from services.gateway import metrics
from services.gateway.connection import Conn
from services.gateway.hub import Hub
from services.gateway.session import Reply, connected_text, error_text, frame_text
from services.gateway.typing_state import TypingTracker
from shared import subjects
from shared.auth import Identity
from shared.config import Settings
from shared.errors import CLOSE_SERVICE_RESTART, AGError
from shared.logs import get_logger
from shared.schemas.commands import (
    HistoryReply,
    HistoryRequest,
    Origin,
    PostMessage,
    PresenceChange,
    PresenceReply,
)
from shared.schemas.wire import ChatMessageIn, ClientFrame, HistoryIn, TypingIn, encode
from shared.timefmt import now_ms, parse_ts

__all__ = ["ChatEndpoint"]

log = get_logger(__name__)
_history_decoder = msgspec.json.Decoder(HistoryReply)
_presence_decoder = msgspec.json.Decoder(PresenceReply)
UNAVAILABLE = "the chat service is unavailable; re-send later with the same id"


class ChatEndpoint:
    name = "chat"

    def __init__(self, settings: Settings, hub: Hub, nc: NATS) -> None:
        self.settings = settings
        self.hub = hub
        self.nc = nc
        self.js = nc.jetstream()
        self.typing = TypingTracker(settings.typing_ttl_s)
        self._lapse_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._lapse_task = asyncio.create_task(self._lapse_loop(), name="typing-lapse")

    async def stop(self) -> None:
        if self._lapse_task:
            self._lapse_task.cancel()
            await asyncio.gather(self._lapse_task, return_exceptions=True)

    def allowed(self, identity: Identity) -> bool:
        return True

    # --- open / close ---------------------------------------------------------------------
    async def on_open(self, conn: Conn, last_seq: int | None) -> None:
        assert conn.identity is not None and conn.context_id is not None
        ctx = conn.context_id
        conn.hold()  # broadcasts wait until connected/presence/recovery are out
        await self.hub.join(subjects.chat_live(ctx), conn, log_subject=subjects.chat_messages(ctx))
        users = await self._presence_open(conn)
        await conn.reply(connected_text(conn))
        await conn.reply(frame_text("presence", {"users": users}))
        replayed = last_seq
        if last_seq is not None:
            replayed = await self._recover(conn, last_seq)
            if replayed is None:  # the socket would miss messages: it recovers later instead
                reason = "recovery unavailable; reconnect with lastSeq"
                await conn.reply(None, then=lambda: conn.close(CLOSE_SERVICE_RESTART, reason))
                return
        await conn.reply(None, then=lambda: conn.release(after_seq=replayed))

    async def _presence_open(self, conn: Conn) -> list[dict[str, str]]:
        assert conn.identity is not None and conn.context_id is not None
        conn.present = True
        change = PresenceChange(
            self.hub.gateway_id, "open", conn.ref(), self.hub.next_presence_seq()
        )
        try:
            reply = await self.nc.request(
                subjects.RPC_CHAT_PRESENCE, encode(change), timeout=self.settings.command_timeout_s
            )
            return _presence_decoder.decode(reply.data).users
        except (TimeoutError, nats.errors.Error, msgspec.DecodeError) as exc:
            # The heartbeat will register this socket once the chat service is back.
            log.warning("presence unavailable", extra={"error": repr(exc)})
            mine = {
                c.identity.user_id: c.identity.name
                for c in self.hub.members(subjects.chat_live(conn.context_id))
                if c.identity
            }
            return [{"userId": u, "username": n} for u, n in sorted(mine.items())]

    async def _recover(self, conn: Conn, last_seq: int) -> int | None:
        """Replay what the socket missed; the last seq replayed, or None when that failed."""
        assert conn.context_id is not None
        req = HistoryRequest(conn.context_id, afterSeq=last_seq, cap=self.settings.recovery_max)
        try:
            reply = await self._history_rpc(req)
        except AGError as exc:
            await conn.reply(error_text(exc))
            return None
        if reply.truncated:
            await conn.reply(frame_text("recovered", {"count": 0, "truncated": True}))
            return reply.lastSeq
        for m in reply.messages:
            await conn.reply(frame_text("message", m))
        await conn.reply(frame_text("recovered", {"count": len(reply.messages)}))
        return reply.messages[-1]["seq"] if reply.messages else last_seq

    async def on_close(self, conn: Conn) -> None:
        assert conn.identity is not None and conn.context_id is not None
        ctx, user = conn.context_id, conn.identity.user_id
        live = subjects.chat_live(ctx)
        await self.hub.leave(live, conn)
        if not any(c.user_id == user for c in self.hub.members(live)) and self.typing.stop(
            ctx, user
        ):
            await self._typing_broadcast(ctx, user, conn.identity.name, False)
        if self.nc.is_connected:
            conn.present = False
            change = PresenceChange(
                self.hub.gateway_id, "close", conn.ref(), self.hub.next_presence_seq()
            )
            await self.nc.publish(subjects.RPC_CHAT_PRESENCE, encode(change))

    # --- frames ---------------------------------------------------------------------------
    def handle(self, conn: Conn, frame: ClientFrame) -> Reply:
        match frame.data:
            case ChatMessageIn():
                return self._post(conn, frame, frame.data)
            case TypingIn():
                return self._typing(conn, frame.data)
            case HistoryIn():
                return self._history(conn, frame, frame.data)
        raise AGError("unknown_type", f"{frame.type!r} is not handled here")

    async def _post(self, conn: Conn, frame: ClientFrame, data: ChatMessageIn) -> str | None:
        assert conn.identity is not None and conn.context_id is not None
        request_id = uuid.uuid4().hex
        timeout = self.settings.command_timeout_s
        cmd = PostMessage(
            requestId=request_id,
            contextId=conn.context_id,
            origin=Origin(self.hub.gateway_id, conn.id, conn.identity.user_id, conn.identity.name),
            content=data.content,
            messageType=data.messageType,
            clientId=frame.id,
            deadline=now_ms() + int(timeout * 1000),
        )
        fut = self.hub.expect(request_id)
        started = time.perf_counter()
        try:
            await self.js.publish(
                subjects.chat_commands(conn.context_id), encode(cmd), timeout=timeout
            )
            # A little past the deadline: by then the service has either answered or dropped it.
            result = await asyncio.wait_for(fut, timeout + 0.5)
        except (TimeoutError, nats.errors.Error):
            return error_text(AGError("unavailable", UNAVAILABLE), frame.id)
        finally:
            self.hub.forget(request_id)
        metrics.COMMAND_LATENCY.labels("chat_message").observe(time.perf_counter() - started)
        if result.error:
            return error_text(AGError(result.error, result.message, data=result.data), frame.id)
        if frame.id is None:
            return None
        return frame_text("ack", result.ok, id=frame.id)

    async def _typing(self, conn: Conn, data: TypingIn) -> None:
        """No reply; runs in the frame's reply slot so typing frames keep their order."""
        assert conn.identity is not None and conn.context_id is not None
        ident, ctx = conn.identity, conn.context_id
        if self.typing.set(ctx, ident.user_id, ident.name, data.isTyping, time.monotonic()):
            await self._typing_broadcast(ctx, ident.user_id, ident.name, data.isTyping)

    async def _typing_broadcast(self, ctx: str, user: str, name: str, typing: bool) -> None:
        frame = frame_text("typing", {"userId": user, "username": name, "isTyping": typing})
        await self.hub.broadcast(
            subjects.chat_live(ctx), frame.encode(), except_user=user, droppable=True
        )

    async def _lapse_loop(self) -> None:
        while True:
            await asyncio.sleep(0.25)  # a periodic timer: lapses are accurate to 250 ms
            for ctx, user, name in self.typing.lapsed(time.monotonic()):
                try:
                    await self._typing_broadcast(ctx, user, name, False)
                except Exception as exc:  # NATS away: this lapse is lost, the loop must live
                    log.warning("typing lapse not sent", extra={"error": repr(exc)})

    async def _history(self, conn: Conn, frame: ClientFrame, data: HistoryIn) -> str:
        assert conn.context_id is not None
        before_ms = None
        if data.before is not None:
            try:
                before_ms = parse_ts(data.before)
            except ValueError:
                return error_text(
                    AGError("invalid_message", "before must be an ISO 8601 timestamp"), frame.id
                )
        req = HistoryRequest(conn.context_id, data.limit, before_ms, data.beforeSeq)
        try:
            reply = await self._history_rpc(req)
        except AGError as exc:
            return error_text(exc, frame.id)
        return frame_text(
            "history", {"messages": reply.messages, "hasMore": reply.hasMore}, id=frame.id
        )

    async def _history_rpc(self, req: HistoryRequest) -> HistoryReply:
        try:
            msg = await self.nc.request(
                subjects.RPC_CHAT_HISTORY, encode(req), timeout=self.settings.command_timeout_s
            )
            return _history_decoder.decode(msg.data)
        except (TimeoutError, nats.errors.Error, msgspec.DecodeError):
            raise AGError("unavailable", UNAVAILABLE) from None
