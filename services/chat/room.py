"""One chat room's state, a projection of its message events (sans-I/O).

``apply`` is the only mutation and takes events in log order, so the same log always rebuilds
the same room: seq, the newest messages and the dedup index of client frame ids.

The log is the database: a room keeps only its newest messages (``keep``; None keeps all) and
is loaded from the tail of its subject, so ``history`` and ``after`` answer from memory what
they can and raise ``NotKept`` when the range reaches past it (the service then reads the log).
"""

from __future__ import annotations

import bisect

from shared.schemas.events import ChatMessagePosted, dedup_key
from shared.schemas.wire import message_wire

__all__ = ["NotKept", "Room", "message_wire"]


class NotKept(LookupError):
    """The range asked for reaches back past the messages the room keeps: read the log."""


class Room:
    __slots__ = (
        "context_id",
        "keep",
        "base",
        "_seq",
        "messages",
        "_ts",
        "_log_seqs",
        "last_subject_seq",
        "_dedup",
        "unsure",
        "saved",
    )

    def __init__(self, context_id: str, keep: int | None = None) -> None:
        self.context_id = context_id
        self.keep = keep
        self.base = 0  # the seq before messages[0]: a room loaded from its tail starts later
        self._seq = 0
        self.messages: list[ChatMessagePosted] = []
        self._ts: list[int] = []  # message timestamps, for `before` cursors (non-decreasing)
        self._log_seqs: list[int] = []  # each message's stream sequence
        self.last_subject_seq = 0  # stream sequence of this room's last message event
        # dedup_key -> (messageId, seq, ts): a frame re-sent with its id, or a command
        # redelivered, is stored once
        self._dedup: dict[tuple[str, str], tuple[str, int, int]] = {}
        # Seqs read back from the log whose broadcast this process cannot vouch for (a crash
        # between append and broadcast): a re-sent frame for one of them broadcasts it again.
        self.unsure: set[int] = set()
        # last_subject_seq of the room's snapshot in the store (0: none), to save only changes
        self.saved = 0

    @classmethod
    def restored(
        cls,
        context_id: str,
        keep: int | None,
        messages: list[tuple[ChatMessagePosted, int]],
        last_subject_seq: int,
        dedup: list[tuple[str, str, str, int, int]],
    ) -> Room:
        """A room as its snapshot pictured it (``snapshot``): the newest messages with their
        stream sequences, the subject's last sequence and the dedup entries. ValueError if
        that is not a room's picture (so a damaged snapshot is never believed)."""
        room = cls(context_id, keep)
        for ev, stream_seq in messages:
            if ev.contextId != context_id or (room.messages and ev.seq != room.seq + 1):
                raise ValueError("not one room's consecutive messages")
            if not room.apply(ev, stream_seq):
                raise ValueError("stream sequences out of order")
        if not room.messages or last_subject_seq < room.last_subject_seq:
            raise ValueError("no messages, or a last sequence before the last message")
        room.last_subject_seq = last_subject_seq
        room._dedup = {(u, c): (m, seq, ts) for u, c, m, seq, ts in dedup}
        return room

    def snapshot(
        self,
    ) -> tuple[list[tuple[ChatMessagePosted, int]], list[tuple[str, str, str, int, int]]]:
        """What ``restored`` takes back: (message, stream sequence) pairs and dedup entries."""
        pairs = list(zip(self.messages, self._log_seqs, strict=True))
        return pairs, [(u, c, m, seq, ts) for (u, c), (m, seq, ts) in self._dedup.items()]

    @property
    def seq(self) -> int:
        return self._seq

    def apply(self, ev: ChatMessagePosted, stream_seq: int) -> bool:
        """Add a logged message; False if it is already applied (redelivery, replay overlap)."""
        if stream_seq <= self.last_subject_seq or ev.seq <= self._seq:
            return False
        if not self.messages:
            self.base = ev.seq - 1
        self._seq = ev.seq
        self.messages.append(ev)
        # Timestamps come from one chat service clock; clamp so a clock step back keeps order.
        self._ts.append(max(ev.ts, self._ts[-1]) if self._ts else ev.ts)
        self._log_seqs.append(stream_seq)
        self.last_subject_seq = stream_seq
        key = dedup_key(ev.userId, ev.clientId, ev.requestId)
        if key is not None:
            self._dedup[key] = (ev.messageId, ev.seq, ev.ts)
        if self.keep is not None and len(self.messages) >= 2 * self.keep:
            cut = len(self.messages) - self.keep  # trimmed in steps: amortised O(1)
            del self.messages[:cut], self._ts[:cut], self._log_seqs[:cut]
            self.base += cut
        return True

    def skip(self, stream_seq: int) -> None:
        """Something on the room's subject that is not a message (an event no one can decode):
        the next append still expects it as the subject's last."""
        self.last_subject_seq = max(self.last_subject_seq, stream_seq)

    def mark_unsure_since(self, horizon_ms: int) -> None:
        """Messages newer than ``horizon_ms`` may not have been broadcast (called after a load)."""
        for ev in reversed(self.messages):
            if ev.ts < horizon_ms:
                break
            self.unsure.add(ev.seq)

    def message(self, seq: int) -> ChatMessagePosted | None:
        i = seq - self.base - 1
        return self.messages[i] if 0 <= i < len(self.messages) else None

    def log_seq(self, seq: int) -> int | None:
        """The stream sequence of message ``seq``."""
        i = seq - self.base - 1
        return self._log_seqs[i] if 0 <= i < len(self._log_seqs) else None

    def duplicate_of(
        self, user_id: str, client_id: str | None, request_id: str | None = None
    ) -> tuple[str, int] | None:
        """(messageId, seq) of the message stored under this ``dedup_key``, if any."""
        key = dedup_key(user_id, client_id, request_id)
        hit = self._dedup.get(key) if key is not None else None
        return (hit[0], hit[1]) if hit else None

    @property
    def dedup_size(self) -> int:
        return len(self._dedup)

    def forget_before(self, horizon_ms: int) -> None:
        """Drop dedup entries older than the window (kept at least that long, as promised)."""
        stale = [k for k, v in self._dedup.items() if v[2] < horizon_ms]
        for k in stale:
            del self._dedup[k]

    def history(
        self, limit: int, before_ms: int | None = None, before_seq: int | None = None
    ) -> tuple[list[ChatMessagePosted], bool]:
        """The newest ``limit`` messages strictly before the cursors, oldest first, and hasMore
        (``NotKept`` when they reach back past the messages kept)."""
        end = len(self.messages)
        if before_seq is not None:
            # seq is base+1..n with no gaps, so message k sits at index k-base-1
            end = min(end, max(before_seq - self.base - 1, 0))
        if before_ms is not None:
            i = bisect.bisect_left(self._ts, before_ms)
            if i == 0 and self.base:
                raise NotKept  # the first message at or after before_ms may be older
            end = min(end, i)
        start = end - limit
        if start < 0 and self.base:
            raise NotKept
        start = max(start, 0)
        return self.messages[start:end], start + self.base > 0

    def after(self, seq: int, cap: int) -> tuple[list[ChatMessagePosted], bool]:
        """Every message with a higher seq, or ([], True) when more than ``cap`` were missed
        (``NotKept`` when they reach back past the messages kept)."""
        missed = self._seq - max(seq, 0)
        if missed > cap:
            return [], True
        if missed <= 0:
            return [], False
        if seq < self.base:
            raise NotKept
        return self.messages[seq - self.base :], False
