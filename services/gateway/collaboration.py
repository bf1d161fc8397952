"""The collaboration endpoint's own rules: shared documents (sessions) of one context, with OT.

Paths: ``edit`` goes to the collaboration service as a durable command (``EditCommand``, through
the ``CommandClient`` as chat messages do); ``join_session``, ``leave_session`` and ``snapshot``
are requests on ``RPC_COLLAB``; ``cursor`` is live only (droppable, never stored). The socket
itself is announced too (open/close, and in the heartbeat): a user with the editor open counts as
online before joining any session.

Delivery: each joined session is a ``Member`` receiving the session's live subject through the
fan-out:

- ``edit`` frames carry their version (``AG-Seq``) and skip only the sending connection
  (``AG-Except-Conn``), so the sender's other tabs get them; ``cursor`` and ``participant_*``
  frames skip all of the user's connections;
- while a join or snapshot is under way the member's gate holds the session's frames, and
  releases them right after the reply is queued (in the same step of the connection's reply
  pump, before any later reply), dropping edits the reply already contains: ``session_joined``
  and ``snapshot`` are followed by exactly the edits after their version;
- an ``ack`` waits (at most ``ACK_ORDER_WAIT_S``) until the edits applied before it have been
  handed to the socket, so a client with one edit in flight per session receives that session's
  edits and its acks in version order. With several in flight, an ack can overtake an edit by a
  few frames; clients apply by version.

Where docs/protocol.md is silent: ``sessionId`` left out with zero or several sessions joined is
``invalid_message``; a session this connection has not joined is ``not_found``; an ``ack`` is
sent for an edit without ``id`` too (a client needs its version); an insert needs non-empty
``content``; a ``delete`` edit frame carries ``length`` but not the removed text; ``cursor``
positions are relayed as sent (not checked against the document).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import msgspec

from services.gateway.collab_member import Member
from services.gateway.connection import Authed, Reply
from services.gateway.parts import Parts
from services.gateway.session import Handled, connected_text, error_text, frame_text
from shared import subjects
from shared.auth import Identity
from shared.bus.port import Unavailable
from shared.errors import (
    Forbidden,
    InvalidMessage,
    NotFound,
    Refusal,
    ServiceUnavailable,
    UnknownType,
    from_code,
)
from shared.logs import get_logger
from shared.schemas.commands import (
    CollabClose,
    CollabJoin,
    CollabLeave,
    CollabOpen,
    CollabReply,
    CollabRequest,
    CollabSnapshotRequest,
    Connection,
    EditCommand,
    SessionMember,
)
from shared.schemas.frames import (
    CursorData,
    DocumentData,
    EditAckData,
    SessionJoinedData,
    SessionRefData,
    SnapshotData,
)
from shared.schemas.wire import ClientFrame, CursorIn, EditIn, JoinSessionIn, SessionRefIn

__all__ = ["CollaborationEndpoint"]

log = get_logger(__name__)

ACK_ORDER_WAIT_S = 1.0
UNAVAILABLE = "the collaboration service is unavailable; re-send later with the same id"
_rpc_encoder = msgspec.msgpack.Encoder()
_rpc_decoder = msgspec.msgpack.Decoder(CollabReply)


class CollaborationEndpoint:
    name = "collaboration"

    def __init__(self, parts: Parts) -> None:
        self.settings = parts.settings
        self.bus = parts.bus
        self.fanout = parts.fanout
        self.commands = parts.commands
        self.heartbeats = heartbeats = parts.heartbeats
        self._joined: dict[str, dict[str, Member]] = {}  # connection id -> session id -> member
        self._open: dict[str, Authed] = {}  # connection id -> socket announced as online
        heartbeats.collab = self.present

    def allowed(self, identity: Identity) -> bool:
        return True

    def present(self) -> tuple[list[SessionMember], list[Connection]]:
        """Session members and open sockets the service was told of (for the heartbeat)."""
        members = [m.ref() for s in self._joined.values() for m in s.values() if m.announced]
        return members, [a.ref() for a in self._open.values()]

    # --- open / close ---------------------------------------------------------------------
    async def on_open(self, authed: Authed, last_seq: int | None) -> None:
        await authed.reply(connected_text(authed))
        # Online in the context from now on, session or not (the heartbeat lists it too, so a
        # lost announcement is made good within a beat).
        self._open[authed.id] = authed
        await self._tell(CollabOpen(self.heartbeats.gateway_id, authed.ref(), self._seq()))

    async def on_close(self, authed: Authed) -> None:
        for member in list(self._joined.pop(authed.id, {}).values()):
            await self._drop(member)
        if self._open.pop(authed.id, None) is not None:
            await self._tell(CollabClose(self.heartbeats.gateway_id, authed.ref(), self._seq()))

    async def _tell(self, change: CollabRequest) -> None:
        if not self.bus.connected:
            return  # the next heartbeat after the reconnect says it
        try:
            await self.bus.publish(subjects.RPC_COLLAB, _rpc_encoder.encode(change))
        except Unavailable as exc:
            log.warning("collaboration presence not sent", extra={"error": str(exc)})

    def _seq(self) -> int:
        return self.heartbeats.next_seq()

    # --- frames ---------------------------------------------------------------------------
    def handle(self, authed: Authed, frame: ClientFrame) -> Handled:
        reply = self._dispatch(authed, frame)
        return _keep_cancellation(reply) if isinstance(reply, Coroutine) else reply

    def _dispatch(self, authed: Authed, frame: ClientFrame) -> Handled:
        match frame.data:
            case JoinSessionIn():
                return self._join(authed, frame, frame.data)
            case EditIn():
                return self._edit(authed, frame, frame.data)
            case CursorIn():
                return self._cursor(self._member(authed, frame.data.sessionId), frame.data)
            case SessionRefIn() if frame.type == "snapshot":
                return self._snapshot(frame, self._member(authed, frame.data.sessionId))
            case SessionRefIn():
                return self._leave(frame, self._member(authed, frame.data.sessionId))
        raise UnknownType(f"{frame.type!r} is not handled here")

    def _member(self, authed: Authed, session_id: str | None) -> Member:
        joined = self._joined.get(authed.id, {})
        if session_id is None:
            if len(joined) == 1:
                return next(iter(joined.values()))
            raise InvalidMessage("sessionId is required unless one session is joined")
        member = joined.get(session_id)
        if member is None:
            raise NotFound(f"session {session_id!r} is not joined on this connection")
        return member

    def _join(self, authed: Authed, frame: ClientFrame, data: JoinSessionIn) -> Handled:
        if data.role == "host" and not authed.identity.has_role("instructor", "admin"):
            raise Forbidden("the host role needs the instructor or admin role")
        sessions = self._joined.setdefault(authed.id, {})
        member = sessions.get(data.sessionId)
        new = member is None
        if member is None:
            member = Member(authed, data.sessionId, data.role, self.settings.outbound_queue)
            sessions[data.sessionId] = member
        member.role = data.role
        member.gate.hold()  # now, in frame order: until the reply is queued (it releases)
        return self._join_io(frame, member, new)

    async def _join_io(self, frame: ClientFrame, member: Member, new: bool) -> Reply:
        """``session_joined`` (or the error), and the release of the member's held frames."""
        try:
            # subscribed before the document is read: nothing missed
            await self.fanout.join(self._subject(member), member)
            member.announced = True
            join = CollabJoin(self.heartbeats.gateway_id, member.ref(), self._seq())
            reply = await self._request(join)
        except Refusal as exc:
            if new:
                await self._drop(member)
            return Reply(error_text(exc, frame.id), lambda: member.gate.release(discard=new))
        except BaseException:  # no reply to follow: release here (a no-op once gone)
            member.gate.release()
            raise
        member.covered(reply.version)
        member.joined = True
        data = SessionJoinedData(
            member.session_id, DocumentData(reply.content, reply.version), reply.participants
        )
        text = frame_text("session_joined", data, id=frame.id)
        return Reply(text, lambda: member.gate.release(reply.version))

    async def _leave(self, frame: ClientFrame, member: Member) -> str:
        await self._drop(member)
        return frame_text("session_left", SessionRefData(member.session_id), id=frame.id)

    def _snapshot(self, frame: ClientFrame, member: Member) -> Handled:
        member.gate.hold()  # now, in frame order: until the reply is queued (it releases)
        return self._snapshot_io(frame, member)

    async def _snapshot_io(self, frame: ClientFrame, member: Member) -> Reply:
        """The ``snapshot`` (or the error), and the release of the member's held frames."""
        try:
            reply = await self._request(
                CollabSnapshotRequest(member.authed.context_id, member.session_id)
            )
        except Refusal as exc:
            return Reply(error_text(exc, frame.id), member.gate.release)
        except BaseException:  # no reply to follow: release here
            member.gate.release()
            raise
        member.covered(reply.version)
        data = SnapshotData(member.session_id, reply.content, reply.version)
        text = frame_text("snapshot", data, id=frame.id)
        return Reply(text, lambda: member.gate.release(reply.version))

    def _edit(self, authed: Authed, frame: ClientFrame, data: EditIn) -> Handled:
        member = self._member(authed, data.sessionId)
        if member.role == "observer":
            raise Forbidden("observers may not edit")
        if data.operation == "insert" and not data.content:
            raise InvalidMessage("an insert needs non-empty content")
        if data.operation == "delete" and data.length is None:
            raise InvalidMessage("a delete needs a length")
        return self._edit_io(frame, member, data)

    async def _edit_io(self, frame: ClientFrame, member: Member, data: EditIn) -> str:
        authed = member.authed
        ticket = self.commands.ticket()
        cmd = EditCommand(
            requestId=ticket.request_id,
            contextId=authed.context_id,
            sessionId=member.session_id,
            origin=ticket.origin(authed),
            operation=data.operation,
            position=data.position,
            version=data.version,
            content=data.content,
            length=data.length,
            clientId=frame.id,
            deadline=ticket.deadline,
        )
        subject = subjects.collab_commands(authed.context_id, member.session_id)
        ok = await self.commands.call(subject, ticket, cmd, "collab_edit")
        version, parts = int(ok["version"]), int(ok.get("parts", 1))
        if member.joined and not await member.caught_up(version - parts, ACK_ORDER_WAIT_S):
            log.info("ack sent before earlier edits arrived", extra={"connectionId": authed.id})
        member.covered(version)
        return frame_text("ack", EditAckData(version, ok["position"]), id=frame.id)

    async def _cursor(self, member: Member, data: CursorIn) -> None:
        authed = member.authed
        # the name is in the participants list
        payload = CursorData(member.session_id, data.position, authed.user_id, data.selectionEnd)
        headers = {subjects.HDR_EXCEPT_USER: authed.user_id, subjects.HDR_DROPPABLE: "1"}
        try:
            frame = frame_text("cursor", payload).encode()
            await self.bus.publish(self._subject(member), frame, headers)
        except Unavailable:
            pass  # ephemeral: a lost cursor is replaced by the next one

    async def _request(self, req: CollabRequest) -> CollabReply:
        try:
            raw = await self.bus.request(
                subjects.RPC_COLLAB,
                _rpc_encoder.encode(req),
                timeout=self.settings.command_timeout_s,
            )
            reply = _rpc_decoder.decode(raw)
        except (Unavailable, msgspec.DecodeError):
            raise ServiceUnavailable(UNAVAILABLE) from None
        if reply.error:
            raise from_code(reply.error, reply.message or reply.error)
        return reply

    # --- membership -----------------------------------------------------------------------
    async def _drop(self, member: Member) -> None:
        """Stop delivering at once, leave the live subject, tell the service."""
        member.gate.closed = True
        sessions = self._joined.get(member.authed.id, {})
        if sessions.get(member.session_id) is member:
            del sessions[member.session_id]
        await self.fanout.leave(self._subject(member), member)
        if member.announced:
            await self._tell(CollabLeave(self.heartbeats.gateway_id, member.ref(), self._seq()))

    @staticmethod
    def _subject(member: Member) -> str:
        return subjects.collab_live(member.authed.context_id, member.session_id)


async def _keep_cancellation(reply: Coroutine[Any, Any, Any]) -> Any:
    """Run a reply; if its task was cancelled meanwhile, end cancelled even when it finished.

    On Python 3.11 ``asyncio.timeout`` and ``wait_for`` (used inside the bus's requests) can
    return the result when their future completes at the moment the task is cancelled,
    swallowing the cancellation. The connection's reply pump, cancelled when the socket closes,
    waits on this task; it must end cancelled, or the pump never stops and the socket's handler
    hangs.
    """
    result = await reply
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
    return result
