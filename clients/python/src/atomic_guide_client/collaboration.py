"""Collaboration client (``/api/collaboration/ws``): one shared plain-text document.

Edits apply to :attr:`CollaborationClient.document` at once and reach the server one at a
time (see :mod:`._document` for the OT state machine and its rebase policy). Positions
and lengths are UTF-16 code units, as in JavaScript.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any, Unpack

import msgspec

from ._dispatch import Frame
from ._document import Desync, SharedDocument
from ._ot import Delete, Insert, Op
from ._outbox import new_request_id
from .config import ConnectionOptions
from .connection import Connection, TokenProvider
from .frames import (
    AckFrame,
    CursorRequest,
    EditFrame,
    EditRequest,
    ErrorFrame,
    JoinSessionRequest,
    LeaveSessionRequest,
    ParticipantJoinedFrame,
    ParticipantLeftFrame,
    SessionJoinedFrame,
    SnapshotFrame,
    SnapshotRequest,
)
from .payloads import (
    CursorPayload,
    EditAck,
    EditPayload,
    JoinSessionPayload,
    Participant,
    SessionJoined,
    SessionPayload,
    Snapshot,
)

__all__ = ["CollaborationClient"]

#: Refusals after which a local edit is dropped rather than rebased and sent again.
_FATAL_EDIT_ERRORS = frozenset({"forbidden", "invalid_message", "too_large", "not_found"})


class CollaborationClient(Connection):
    """Edit one session's document together with others.

    ``join()`` a session, then call ``insert``/``delete`` freely (also while
    disconnected): the local :attr:`document` changes at once and the server converges
    to the same text. Remote edits arrive as ``edit`` frames (server positions) and are
    already applied to :attr:`document` when delivered. ``await synced()`` waits until
    every local edit has been acknowledged.
    """

    path = "/api/collaboration/ws"

    def __init__(
        self,
        url: str,
        context_id: str,
        token_provider: TokenProvider | str,
        **options: Unpack[ConnectionOptions],
    ) -> None:
        super().__init__(url, context_id, token_provider, **options)
        self._session_id: str | None = None
        self._role = "participant"
        self._doc: SharedDocument | None = None
        self._participants: dict[str, Participant] = {}
        self._edit_id: str | None = None
        self._edit_future: asyncio.Future[Any] | None = None
        self._snapshot_id: str | None = None
        self._synced = asyncio.Event()
        self._synced.set()

    @property
    def session_id(self) -> str | None:
        return self._session_id

    @property
    def document(self) -> str:
        """The local text: the server's plus local edits not yet acknowledged."""
        return "" if self._doc is None else self._doc.text

    @property
    def version(self) -> int:
        """The server version :attr:`document` is based on."""
        return 0 if self._doc is None else self._doc.version

    @property
    def participants(self) -> Mapping[str, Participant]:
        return dict(self._participants)

    async def join(self, session_id: str, role: str = "participant") -> SessionJoined:
        """Join ``session_id`` (one session per client; ``leave()`` before another)."""
        if self._session_id not in (None, session_id):
            raise RuntimeError(f"already in session {self._session_id!r}; leave() first")
        self._session_id, self._role = session_id, role
        request = JoinSessionRequest(data=JoinSessionPayload(session_id=session_id, role=role))
        try:
            joined: SessionJoined = await self.send(request)
        except BaseException:
            if self._doc is None:
                self._session_id = None
            raise
        return joined

    async def leave(self) -> None:
        """Leave the session; local edits not yet acknowledged are abandoned."""
        session_id = self._session_id
        if session_id is None:
            return
        if self._edit_future is not None:
            self._edit_future.cancel()  # withdraw it: it must not be re-sent after we left
        self._session_id, self._doc, self._edit_id, self._snapshot_id = None, None, None, None
        self._participants.clear()
        self._synced.set()
        await self.send(LeaveSessionRequest(data=SessionPayload(session_id=session_id)))

    def insert(self, position: int, text: str) -> None:
        """Insert ``text`` at UTF-16 offset ``position`` of :attr:`document`."""
        if text:
            self._edit(Insert(position, text))

    def delete(self, position: int, length: int) -> None:
        """Delete ``length`` UTF-16 code units at ``position`` of :attr:`document`."""
        if length < 0:
            raise ValueError("length must be >= 0")
        if length:
            self._edit(Delete(position, length))

    def cursor(self, position: int, selection_end: int | None = None) -> bool:
        """Show our cursor to the others; dropped (returns False) while disconnected."""
        payload = CursorPayload(
            session_id=self._session_id, position=position, selection_end=selection_end
        )
        return self.send_nowait(CursorRequest(data=payload))

    async def snapshot(self) -> Snapshot:
        """The server's current text and version (does not touch the local state)."""
        request = SnapshotRequest(data=SessionPayload(session_id=self._session_id))
        snapshot: Snapshot = await self.send(request)
        return snapshot

    async def synced(self) -> None:
        """Wait until every local edit is acknowledged and the state is not resyncing."""
        await self._synced.wait()

    # --- OT plumbing ---------------------------------------------------------------------

    def _edit(self, op: Op) -> None:
        if self._doc is None or self._session_id is None:
            raise RuntimeError("join a session first")
        if self._role == "observer":
            raise PermissionError("observers may not edit")
        self._send_op(self._doc.local(op))  # ValueError if op does not fit the document

    def _send_op(self, op: Op | None) -> None:
        doc = self._doc
        if op is not None and doc is not None:
            self._edit_id = new_request_id()
            payload = EditPayload(
                session_id=self._session_id,
                operation="insert" if isinstance(op, Insert) else "delete",
                position=op.position,
                version=doc.version,
                content=op.text if isinstance(op, Insert) else None,
                length=op.length if isinstance(op, Delete) else None,
            )
            # Not scoped: an unacknowledged edit is re-sent, same id and base version,
            # after a reconnect; the server acknowledges a duplicate without re-applying.
            edit = self._request(EditRequest(id=self._edit_id, data=payload), counted=False)
            edit.add_done_callback(_consume)
            self._edit_future = edit
        self._update_synced()

    def _resync(self) -> None:
        """Ask for a snapshot to rebase on (once at a time, on the current socket)."""
        if self._doc is None or self._session_id is None:
            return
        self._doc.begin_resync()
        self._update_synced()
        if self._snapshot_id is not None or not self.connected:
            return  # one is on its way, or the re-join after reconnecting resyncs
        self._snapshot_id = new_request_id()
        request = SnapshotRequest(
            id=self._snapshot_id, data=SessionPayload(session_id=self._session_id)
        )
        self._request(request, scoped=True, counted=False).add_done_callback(_consume)

    async def _resync_later(self) -> None:
        await asyncio.sleep(self._backoff.delay(1))
        self._resync()

    def _update_synced(self) -> None:
        if self._doc is None or self._doc.synced:
            self._synced.set()
        else:
            self._synced.clear()

    def _on_open(self) -> None:
        self._snapshot_id = None  # scoped: died with the old socket
        if self._doc is None or self._session_id is None:
            return
        self._doc.begin_resync()
        self._update_synced()
        payload = JoinSessionPayload(session_id=self._session_id, role=self._role)
        rejoin = self._request(JoinSessionRequest(data=payload), scoped=True, counted=False)
        rejoin.add_done_callback(_consume)

    def _on_frame(self, frame: Frame) -> Iterable[Frame]:
        # Runs in arrival order, before any future resolves: OT needs acks, remote edits
        # and snapshots integrated in exactly the order the server sent them.
        doc = self._doc
        replied_to = frame.id if frame.id is not None else object()
        if isinstance(frame, SessionJoinedFrame) and frame.data.session_id == self._session_id:
            self._joined(frame.data)
        elif isinstance(frame, EditFrame) and doc is not None:
            if frame.data.session_id in ("", self._session_id):
                self._remote_edit(doc, frame)
        elif isinstance(frame, AckFrame | ErrorFrame) and replied_to == self._edit_id:
            self._edit_id = self._edit_future = None
            if isinstance(frame, AckFrame) and doc is not None:
                self._acked(doc, frame)
            elif isinstance(frame, ErrorFrame):
                if doc is not None:
                    doc.reject(keep=frame.code not in _FATAL_EDIT_ERRORS)
                self._deliver(frame)  # let the application see why its edit bounced
            if doc is not None and doc.resyncing:
                self._resync()  # no-op while a snapshot is already on its way
        elif isinstance(frame, SnapshotFrame | ErrorFrame) and replied_to == self._snapshot_id:
            self._snapshot_id = None
            if isinstance(frame, SnapshotFrame) and doc is not None:
                if doc.inflight is None:
                    self._send_op(doc.rebase(frame.data.content, frame.data.version))
                # else: our edit's reply is still due (an ``unavailable`` retry); its
                # arrival asks for a fresh snapshot, which will then include it.
            else:
                self._logger.warning("snapshot for resync failed: %s; retrying", frame.error)
                self._spawn(self._resync_later())
        elif isinstance(frame, ParticipantJoinedFrame | ParticipantLeftFrame):
            if frame.data.session_id == self._session_id:
                self._track(frame)
        return (frame,)

    def _joined(self, joined: SessionJoined) -> None:
        self._participants = {p.user_id: p for p in joined.participants}
        document = joined.document
        if self._doc is None:
            self._doc = SharedDocument(document.content, document.version)
        elif self._doc.inflight is not None:
            self._resync()  # our edit is re-sent after this join: the snapshot follows it
        else:
            self._send_op(self._doc.rebase(document.content, document.version))
        self._update_synced()

    def _acked(self, doc: SharedDocument, frame: AckFrame) -> None:
        try:
            version = msgspec.convert(frame.data, EditAck).version
        except msgspec.ValidationError as exc:
            self._logger.warning("malformed edit ack %r: %s", frame.data, exc)
            doc.reject(keep=False)  # it *was* applied: keep it in the base, let a snapshot tell
            return
        try:
            self._send_op(doc.ack(version))
        except Desync as exc:
            self._logger.warning("resyncing after ack: %s", exc)

    def _remote_edit(self, doc: SharedDocument, frame: EditFrame) -> None:
        edit = frame.data
        op: Op
        if edit.operation == "insert":
            op = Insert(edit.position, edit.content or "")
        else:
            op = Delete(edit.position, edit.length or 0)
        try:
            doc.remote(op, edit.version)
        except Desync as exc:
            self._logger.warning("resyncing after remote edit: %s", exc)
            self._resync()

    def _track(self, frame: ParticipantJoinedFrame | ParticipantLeftFrame) -> None:
        if isinstance(frame, ParticipantJoinedFrame):
            d = frame.data
            self._participants[d.user_id] = Participant(
                user_id=d.user_id, username=d.username, role=d.role
            )
        else:
            self._participants.pop(frame.data.user_id, None)


def _consume(future: asyncio.Future[Any]) -> None:
    """Mark an internal request's outcome as seen: its reply was handled in _on_frame."""
    if not future.cancelled():
        future.exception()
