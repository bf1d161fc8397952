"""The collaboration endpoint: shared documents (sessions) of one context, edited with OT.

Paths: ``edit`` goes to the collaboration service as a durable command (``EditCommand`` on the
work queue; the result returns on this gateway's reply subject, as chat messages do);
``join_session``, ``leave_session`` and ``snapshot`` are requests on ``RPC_COLLAB``; ``cursor``
is live only (core NATS, droppable, never stored).

Delivery: the gateway subscribes to the live subject of every session it has members in and hands
each frame to them itself (not through ``Hub`` rooms), because each member has a gate:

- ``edit`` frames carry their version (``AG-Seq``) and skip only the sending connection
  (``AG-Except-Conn``), so the sender's other tabs get them; ``cursor`` and ``participant_*``
  frames skip all of the user's connections;
- while a join or snapshot is under way the member holds the session's frames, and releases them
  right after the reply is queued (the reply resolves to ``(text, member.release)``, which the
  connection's reply pump runs in the same step, before any later reply), dropping edits the reply
  already contains: ``session_joined`` and ``snapshot`` are followed by exactly the edits after
  their version, and before the replies to later frames;
- an ``ack`` waits (at most ``ACK_ORDER_WAIT_S``) until the edits applied before it have been
  handed to the socket, so a client with one edit in flight per session receives that session's
  edits and its acks in version order. With several in flight, an ack can overtake an edit by a
  few frames; clients apply by version.

Where PROTOCOL.md is silent: ``sessionId`` left out with zero or several sessions joined is
``invalid_message``; a session this connection has not joined is ``not_found``; an ``ack`` is
sent for an edit without ``id`` too (a client needs its version); an insert needs non-empty
``content``; a ``delete`` edit frame carries ``length`` but not the removed text; ``cursor``
positions are relayed as sent (not checked against the document).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import Coroutine
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.gateway import metrics
from services.gateway.collab_member import Member
from services.gateway.connection import Conn, Followed
from services.gateway.hub import Hub
from services.gateway.session import Reply, connected_text, error_text, frame_text
from shared import subjects
from shared.auth import Identity
from shared.config import Settings
from shared.errors import AGError
from shared.logs import get_logger
from shared.schemas.commands import (
    CollabClose,
    CollabHeartbeat,
    CollabJoin,
    CollabLeave,
    CollabOpen,
    CollabReply,
    CollabRequest,
    CollabSnapshotRequest,
    EditCommand,
    Origin,
)
from shared.schemas.wire import ClientFrame, CursorIn, EditIn, JoinSessionIn, SessionRefIn, encode
from shared.timefmt import now_ms

__all__ = ["CollaborationEndpoint"]

log = get_logger(__name__)

ACK_ORDER_WAIT_S = 1.0
UNAVAILABLE = "the collaboration service is unavailable; re-send later with the same id"
_rpc_encoder = msgspec.msgpack.Encoder()
_rpc_decoder = msgspec.msgpack.Decoder(CollabReply)


class CollaborationEndpoint:
    name = "collaboration"

    def __init__(self, settings: Settings, hub: Hub, nc: NATS) -> None:
        self.settings = settings
        self.hub = hub
        self.nc = nc
        self.js = nc.jetstream()
        self._members: dict[str, dict[str, Member]] = {}  # live subject -> connection id -> member
        self._joined: dict[str, dict[str, Member]] = {}  # connection id -> session id -> member
        self._subs: dict[str, Subscription] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._beat_task: asyncio.Task[None] | None = None
        self._open: dict[str, Conn] = {}  # connection id -> socket announced as online

    async def start(self) -> None:
        self._beat_task = asyncio.create_task(self._beat(), name="collab-heartbeat")

    async def stop(self) -> None:
        if self._beat_task is not None:
            self._beat_task.cancel()
            await asyncio.gather(self._beat_task, return_exceptions=True)
        if self.nc.is_connected:  # the service drops this gateway's members at once
            final = CollabHeartbeat(self.hub.gateway_id, [], final=True)
            await self.nc.publish(subjects.COLLAB_HEARTBEAT, encode(final))
        for sub in self._subs.values():
            await sub.unsubscribe()
        self._subs.clear()

    def allowed(self, identity: Identity) -> bool:
        return True

    # --- open / close ---------------------------------------------------------------------
    async def on_open(self, conn: Conn, last_seq: int | None) -> None:
        await conn.reply(connected_text(conn))
        # Online in the context from now on, session or not (the heartbeat lists it too, so a
        # lost announcement is made good within a beat).
        self._open[conn.id] = conn
        await self._tell(CollabOpen(self.hub.gateway_id, conn.ref(), self.hub.next_presence_seq()))

    async def on_close(self, conn: Conn) -> None:
        for member in list(self._joined.pop(conn.id, {}).values()):
            await self._detach(member)
            await self._tell_left(member)
        if self._open.pop(conn.id, None) is not None:
            await self._tell(
                CollabClose(self.hub.gateway_id, conn.ref(), self.hub.next_presence_seq())
            )

    async def _tell(self, change: CollabOpen | CollabClose) -> None:
        if not self.nc.is_connected:
            return  # the next heartbeat after the reconnect says it
        try:
            await self.nc.publish(subjects.RPC_COLLAB, _rpc_encoder.encode(change))
        except nats.errors.Error as exc:
            log.warning("collaboration presence not sent", extra={"error": repr(exc)})

    # --- frames ---------------------------------------------------------------------------
    def handle(self, conn: Conn, frame: ClientFrame) -> Reply:
        try:
            reply = self._dispatch(conn, frame)
        except AGError as exc:
            return error_text(exc, frame.id)
        return _keep_cancellation(reply) if isinstance(reply, Coroutine) else reply

    def _dispatch(self, conn: Conn, frame: ClientFrame) -> Reply:
        match frame.data:
            case JoinSessionIn():
                return self._join(conn, frame, frame.data)
            case EditIn():
                return self._edit(conn, frame, frame.data)
            case CursorIn():
                return self._cursor(self._member(conn, frame.data.sessionId), frame.data)
            case SessionRefIn() if frame.type == "snapshot":
                return self._snapshot(frame, self._member(conn, frame.data.sessionId))
            case SessionRefIn():
                return self._leave(frame, self._member(conn, frame.data.sessionId))
        raise AGError("unknown_type", f"{frame.type!r} is not handled here")

    def _member(self, conn: Conn, session_id: str | None) -> Member:
        joined = self._joined.get(conn.id, {})
        if session_id is None:
            if len(joined) == 1:
                return next(iter(joined.values()))
            raise AGError("invalid_message", "sessionId is required unless one session is joined")
        member = joined.get(session_id)
        if member is None:
            raise AGError("not_found", f"session {session_id!r} is not joined on this connection")
        return member

    def _join(self, conn: Conn, frame: ClientFrame, data: JoinSessionIn) -> Reply:
        assert conn.identity is not None
        if data.role == "host" and not conn.identity.has_role("instructor", "admin"):
            raise AGError("forbidden", "the host role needs the instructor or admin role")
        sessions = self._joined.setdefault(conn.id, {})
        member = sessions.get(data.sessionId)
        new = member is None
        if member is None:
            member = Member(conn, data.sessionId, data.role, self.settings.outbound_queue)
            sessions[data.sessionId] = member
        member.role = data.role
        member.hold()  # now, in frame order: until the reply is queued (it releases the hold)
        return self._join_io(frame, member, new)

    async def _join_io(self, frame: ClientFrame, member: Member, new: bool) -> Followed:
        """``session_joined`` (or the error), and the release of the member's held frames."""
        try:
            await self._attach(member)  # subscribed before the document is read: nothing missed
            member.announced = True
            seq = self.hub.next_presence_seq()
            reply = await self._request(CollabJoin(self.hub.gateway_id, member.ref(), seq))
            member.floor = max(member.floor, reply.version)
            member.covered(reply.version)
            member.joined = True
            data = {
                "sessionId": member.session_id,
                "document": {"content": reply.content, "version": reply.version},
                "participants": reply.participants,
            }
            return frame_text("session_joined", data, id=frame.id), member.release
        except AGError as exc:
            if new:
                self._forget(member)
                await self._detach(member)
                await self._tell_left(member)
            return error_text(exc, frame.id), member.release
        except BaseException:  # no reply to follow: release here (a no-op once gone)
            member.release()
            raise

    async def _leave(self, frame: ClientFrame, member: Member) -> str:
        self._forget(member)
        await self._detach(member)
        await self._tell_left(member)
        return frame_text("session_left", {"sessionId": member.session_id}, id=frame.id)

    def _snapshot(self, frame: ClientFrame, member: Member) -> Reply:
        member.hold()  # now, in frame order: until the reply is queued (it releases the hold)
        return self._snapshot_io(frame, member)

    async def _snapshot_io(self, frame: ClientFrame, member: Member) -> Followed:
        """The ``snapshot`` (or the error), and the release of the member's held frames."""
        ctx = member.conn.context_id
        assert ctx is not None
        try:
            reply = await self._request(CollabSnapshotRequest(ctx, member.session_id))
            member.floor = max(member.floor, reply.version)
            member.covered(reply.version)
            data = {"sessionId": member.session_id, "content": reply.content}
            text = frame_text("snapshot", {**data, "version": reply.version}, id=frame.id)
            return text, member.release
        except AGError as exc:
            return error_text(exc, frame.id), member.release
        except BaseException:  # no reply to follow: release here
            member.release()
            raise

    def _edit(self, conn: Conn, frame: ClientFrame, data: EditIn) -> Reply:
        member = self._member(conn, data.sessionId)
        if member.role == "observer":
            raise AGError("forbidden", "observers may not edit")
        if data.operation == "insert" and not data.content:
            raise AGError("invalid_message", "an insert needs non-empty content")
        if data.operation == "delete" and data.length is None:
            raise AGError("invalid_message", "a delete needs a length")
        return self._edit_io(frame, member, data)

    async def _edit_io(self, frame: ClientFrame, member: Member, data: EditIn) -> str:
        conn, ident = member.conn, member.conn.identity
        assert ident is not None and conn.context_id is not None
        request_id = uuid.uuid4().hex
        timeout = self.settings.command_timeout_s
        cmd = EditCommand(
            requestId=request_id,
            contextId=conn.context_id,
            sessionId=member.session_id,
            origin=Origin(self.hub.gateway_id, conn.id, ident.user_id, ident.name),
            operation=data.operation,
            position=data.position,
            version=data.version,
            content=data.content,
            length=data.length,
            clientId=frame.id,
            deadline=now_ms() + int(timeout * 1000),
        )
        fut = self.hub.expect(request_id)
        started = time.perf_counter()
        subject = subjects.collab_commands(conn.context_id, member.session_id)
        try:
            await self.js.publish(subject, encode(cmd), timeout=timeout)
            # A little past the deadline: by then the service has either answered or dropped it.
            async with asyncio.timeout(timeout + 0.5):
                result = await fut
        except (TimeoutError, nats.errors.Error):
            return error_text(AGError("unavailable", UNAVAILABLE), frame.id)
        finally:
            self.hub.forget(request_id)
        metrics.COMMAND_LATENCY.labels("collab_edit").observe(time.perf_counter() - started)
        if result.error:
            return error_text(AGError(result.error, result.message, data=result.data), frame.id)
        ok: dict[str, Any] = result.ok or {}
        version, parts = int(ok["version"]), int(ok.get("parts", 1))
        if member.joined and not await member.caught_up(version - parts, ACK_ORDER_WAIT_S):
            log.info("ack sent before earlier edits arrived", extra={"connectionId": conn.id})
        member.covered(version)
        return frame_text("ack", {"version": version, "position": ok["position"]}, id=frame.id)

    async def _cursor(self, member: Member, data: CursorIn) -> None:
        ident, ctx = member.conn.identity, member.conn.context_id
        assert ident is not None and ctx is not None
        payload: dict[str, Any] = {"sessionId": member.session_id, "position": data.position}
        if data.selectionEnd is not None:
            payload["selectionEnd"] = data.selectionEnd
        payload["userId"] = ident.user_id  # the name is in the participants list
        headers = {subjects.HDR_EXCEPT_USER: ident.user_id, subjects.HDR_DROPPABLE: "1"}
        try:
            frame = frame_text("cursor", payload).encode()
            await self.nc.publish(
                subjects.collab_live(ctx, member.session_id), frame, headers=headers
            )
        except nats.errors.Error:
            pass  # ephemeral: a lost cursor is replaced by the next one

    async def _request(self, req: CollabRequest) -> CollabReply:
        try:
            msg = await self.nc.request(
                subjects.RPC_COLLAB,
                _rpc_encoder.encode(req),
                timeout=self.settings.command_timeout_s,
            )
            reply = _rpc_decoder.decode(msg.data)
        except (TimeoutError, nats.errors.Error, msgspec.DecodeError):
            raise AGError("unavailable", UNAVAILABLE) from None
        if reply.error:
            raise AGError(reply.error, reply.message or reply.error)
        return reply

    # --- live subjects --------------------------------------------------------------------
    async def _attach(self, member: Member) -> None:
        subject = self._subject(member)
        async with self._locks[subject]:
            self._members.setdefault(subject, {})[member.conn.id] = member
            if subject not in self._subs:
                self._subs[subject] = await self.nc.subscribe(subject, cb=self._on_live)

    def _forget(self, member: Member) -> None:
        """Stop delivering at once (the unsubscribe, in ``_detach``, may wait)."""
        member.gone = True
        sessions = self._joined.get(member.conn.id, {})
        if sessions.get(member.session_id) is member:
            del sessions[member.session_id]
        members = self._members.get(self._subject(member), {})
        if members.get(member.conn.id) is member:
            del members[member.conn.id]

    async def _detach(self, member: Member) -> None:
        self._forget(member)
        subject = self._subject(member)
        async with self._locks[subject]:
            if not self._members.get(subject):
                self._members.pop(subject, None)
                sub = self._subs.pop(subject, None)
                if sub is not None:
                    await sub.unsubscribe()

    async def _tell_left(self, member: Member) -> None:
        if member.announced and self.nc.is_connected:
            leave = CollabLeave(self.hub.gateway_id, member.ref(), self.hub.next_presence_seq())
            try:
                await self.nc.publish(subjects.RPC_COLLAB, _rpc_encoder.encode(leave))
            except nats.errors.Error as exc:  # the next heartbeat no longer lists the member
                log.warning("leave not sent", extra={"error": repr(exc)})

    @staticmethod
    def _subject(member: Member) -> str:
        assert member.conn.context_id is not None
        return subjects.collab_live(member.conn.context_id, member.session_id)

    async def _on_live(self, msg: Msg) -> None:
        members = self._members.get(msg.subject)
        if not members:
            return
        headers = msg.headers or {}
        text = msg.data.decode()  # once per broadcast, not per socket
        except_conn = headers.get(subjects.HDR_EXCEPT_CONN)
        except_user = headers.get(subjects.HDR_EXCEPT_USER)
        droppable = subjects.HDR_DROPPABLE in headers
        version = int(headers[subjects.HDR_SEQ]) if subjects.HDR_SEQ in headers else None
        sent = 0
        for conn_id, member in list(members.items()):
            if conn_id == except_conn or (except_user and member.conn.user_id == except_user):
                continue
            member.offer(text, version, droppable)
            sent += 1
        metrics.BROADCAST_FANOUT.observe(sent)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)  # a periodic timer
            if not self.nc.is_connected:
                continue
            members = [m.ref() for s in self._joined.values() for m in s.values() if m.announced]
            conns = [c.ref() for c in self._open.values()]
            hb = CollabHeartbeat(
                self.hub.gateway_id, members, seq=self.hub.next_presence_seq(), connections=conns
            )
            try:
                await self.nc.publish(subjects.COLLAB_HEARTBEAT, encode(hb))
            except Exception as exc:
                log.warning("collaboration heartbeat failed", extra={"error": repr(exc)})


async def _keep_cancellation(
    reply: Coroutine[Any, Any, str | None | Followed],
) -> str | None | Followed:
    """Run a reply; if its task was cancelled meanwhile, end cancelled even when it finished.

    On Python 3.11 ``asyncio.wait_for`` (used inside nats-py's ``request``) returns the result
    when its future completes at the moment the task is cancelled, swallowing the cancellation.
    The connection's reply pump, cancelled when the socket closes, waits on this task; it must
    end cancelled, or the pump never stops and the socket's handler hangs.
    """
    result = await reply
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
    return result
