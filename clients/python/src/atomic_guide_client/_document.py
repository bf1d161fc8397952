"""The client side of collaborative editing for one document, sans-I/O (like ot.js).

State: ``confirmed`` (the server's text at ``version``), at most one operation in flight
(sent, awaiting its ``ack``), and a buffer of later local operations. The local text is
``confirmed + in-flight + buffer``. The methods are the events that can happen; the
ones that may let the next operation go return it, for the caller to send with base
version :attr:`SharedDocument.version`.

Ordering assumption: on one connection the server delivers remote operations in version
order, and the broadcasts of operations applied before ours ahead of our ``ack``. Those
applied *after* ours may overtake our ``ack`` (the real gateway sends broadcasts as they
happen and the ack once its result is back): while an operation is in flight, a remote
operation beyond the next version is held until the ack fills the gap. Anything else
that contradicts the assumption (a version gap, an ``ack`` with an unexpected version, a
remote operation that does not fit) raises :class:`Desync`; the caller then fetches a
snapshot and calls :meth:`SharedDocument.rebase`.

Rebase policy (after ``version_mismatch``, a reconnect or a desync): local operations the
server has not applied are transformed against the difference between the text they were
made on and the snapshot, then sent again. None is dropped; where someone else changed
the same spot meanwhile the usual OT outcome applies (text typed inside a range another
user deleted lands at the start of that range). An operation the server *refused*
(``forbidden``, ``invalid_message``) is dropped: it is undone locally by the rebase.
"""

from __future__ import annotations

from ._ot import Delete, Op, apply, apply_all, diff, merge, transform_lists

__all__ = ["Desync", "SharedDocument"]

#: Remote operations held while waiting for our ack; past this something is wrong.
MAX_EARLY = 1000


def _merge_touching(pieces: list[Op]) -> list[Op]:
    """Pieces of our in-flight delete that touch again (a remote delete undid their split)
    become one, as the server merges them: the ack then names one version, not two."""
    out: list[Op] = []
    for piece in pieces:
        last = out[-1] if out else None
        if (
            isinstance(last, Delete)
            and isinstance(piece, Delete)
            and piece.position == last.position
        ):
            out[-1] = Delete(last.position, last.length + piece.length)
        else:
            out.append(piece)
    return out


class Desync(Exception):
    """The local state can no longer follow the server; resync from a snapshot."""


class SharedDocument:
    def __init__(self, content: str = "", version: int = 0) -> None:
        self._confirmed = content
        self._version = version
        self._text = content
        self._inflight: list[Op] | None = None
        self._buffer: list[Op] = []
        self._early: dict[int, Op] = {}  # remote ops that overtook our ack, by version
        self._resyncing = False

    @property
    def text(self) -> str:
        """The local text: the server's plus every local operation not yet applied there."""
        return self._text

    @property
    def version(self) -> int:
        """The server version ``text`` is based on."""
        return self._version

    @property
    def confirmed(self) -> str:
        return self._confirmed

    @property
    def inflight(self) -> list[Op] | None:
        """The operation awaiting its ack (transformed so far; may have split), or None."""
        return None if self._inflight is None else list(self._inflight)

    @property
    def buffer(self) -> list[Op]:
        return list(self._buffer)

    @property
    def resyncing(self) -> bool:
        return self._resyncing

    @property
    def synced(self) -> bool:
        """Nothing local is waiting to reach the server."""
        return self._inflight is None and not self._buffer and not self._resyncing

    def local(self, op: Op) -> Op | None:
        """Apply a local edit; return it if it may be sent now (nothing in flight).

        Raises ``ValueError`` when ``op`` does not fit the local text.
        """
        self._text = apply(self._text, op)
        if self._inflight is None and not self._resyncing:
            self._inflight = [op]
            return op
        if self._buffer and (merged := merge(self._buffer[-1], op)) is not None:
            self._buffer[-1] = merged
        else:
            self._buffer.append(op)
        return None

    def remote(self, op: Op, version: int) -> list[Op]:
        """Integrate a server ``edit`` that produced ``version``.

        Returns the operations applied to :attr:`text` (local coordinates). Stale or
        duplicate versions, and anything during a resync, are ignored.
        """
        if self._resyncing or version <= self._version:
            return []
        if version != self._version + 1:
            if self._inflight and len(self._early) < MAX_EARLY:
                self._early[version] = op  # applied after ours: our ack fills the gap
                return []
            raise Desync(f"expected version {self._version + 1}, got {version}")
        try:
            self._confirmed = apply(self._confirmed, op)
        except ValueError as exc:
            raise Desync(f"remote {op} does not fit the confirmed text: {exc}") from exc
        self._version = version
        ops: list[Op] = [op]
        if self._inflight is not None:
            self._inflight, ops = transform_lists(self._inflight, ops, ops_win_ties=False)
            self._inflight = _merge_touching(self._inflight)
        self._buffer, ops = transform_lists(self._buffer, ops, ops_win_ties=False)
        self._text = apply_all(self._text, ops)
        return ops

    def ack(self, version: int) -> Op | None:
        """The in-flight operation was applied, the last part producing ``version``.

        Returns the next operation to send, if any.
        """
        if self._inflight is None:
            return None
        pieces, self._inflight = self._inflight, None
        try:
            self._confirmed = apply_all(self._confirmed, pieces)
        except ValueError as exc:
            self._resyncing = True
            raise Desync(f"acked operation does not fit: {exc}") from exc
        if self._resyncing:
            return None
        if not pieces:
            # It vanished (its text was deleted first). The server acks that with its version
            # of the moment, which says nothing about ours: an edit applied after it may have
            # overtaken this ack and be applied here already.
            self._apply_early()
            return self._next()
        # Each surviving piece was applied with its own version.
        expected = self._version + len(pieces)
        self._version = version
        if version != expected:
            self._resyncing = True
            raise Desync(f"ack carries version {version}, expected {expected}")
        self._apply_early()
        return self._next()

    def _apply_early(self) -> None:
        """Integrate the remote operations that arrived ahead of the ack just processed."""
        early, self._early = self._early, {}
        try:
            while (op := early.pop(self._version + 1, None)) is not None:
                self.remote(op, self._version + 1)
            if early:
                raise Desync(f"versions {sorted(early)} do not follow {self._version}")
        except Desync:
            self._resyncing = True
            raise

    def reject(self, *, keep: bool) -> None:
        """The server refused the in-flight operation; a resync must follow.

        ``keep``: it was not applied for a passing reason (``version_mismatch``,
        ``unavailable``) and is rebased and sent again. Otherwise it is dropped.
        """
        pieces, self._inflight = self._inflight or [], None
        self._early.clear()  # the snapshot that must follow carries them
        if keep:
            self._buffer[:0] = pieces
        else:
            # Leave it in the base text: the snapshot diff then removes it locally.
            try:
                self._confirmed = apply_all(self._confirmed, pieces)
            except ValueError:
                pass
        self._resyncing = True

    def begin_resync(self) -> None:
        """Stop sending and ignore remote edits until :meth:`rebase`."""
        self._resyncing = True
        self._early.clear()

    def rebase(self, content: str, version: int) -> Op | None:
        """Adopt the server's ``content`` at ``version``; rebase unsent local operations.

        Must not be called while an operation is in flight (its reply comes first).
        Returns the next operation to send, if any.
        """
        if self._inflight is not None:
            raise RuntimeError("rebase while an operation awaits its reply")
        self._early.clear()
        server_changes = diff(self._confirmed, content)
        self._buffer, _ = transform_lists(self._buffer, server_changes, ops_win_ties=False)
        self._confirmed = content
        self._version = version
        self._text = apply_all(content, self._buffer)
        self._resyncing = False
        return self._next()

    def _next(self) -> Op | None:
        if self._inflight is None and self._buffer and not self._resyncing:
            op = self._buffer.pop(0)
            self._inflight = [op]
            return op
        return None
