"""Chat message ordering: each ``seq`` delivered once, in order, sans-I/O.

Live, messages pass straight through (the server sends a room in ``seq`` order; ``seq``
is strictly increasing but not promised to be gap-free, so a jump is not a loss).
During recovery (after reconnecting with ``lastSeq``, until ``recovered`` and, when that
is truncated, until the history pages have filled the gap) everything is held and then
released sorted, without duplicates and without anything at or below ``last_seq``.
"""

from __future__ import annotations

import heapq

from .frames import MessageFrame

__all__ = ["Sequencer"]


class Sequencer:
    def __init__(self, last_seq: int | None = None) -> None:
        self.last_seq = last_seq
        self._recovering = False
        self._held: list[tuple[int, MessageFrame]] = []
        self._held_seqs: set[int] = set()

    @property
    def recovering(self) -> bool:
        return self._recovering

    def oldest_held(self) -> int | None:
        return self._held[0][0] if self._held else None

    def begin_recovery(self) -> None:
        self._recovering = True

    def push(self, frame: MessageFrame) -> list[MessageFrame]:
        """A message arrived; return the messages deliverable now."""
        seq = frame.data.seq
        if self.last_seq is not None and seq <= self.last_seq:
            return []
        if self._recovering:
            self.hold(frame)
            return []
        self.last_seq = seq
        return [frame]

    def hold(self, frame: MessageFrame) -> None:
        """Keep ``frame`` for the end of recovery (a replayed or history message)."""
        seq = frame.data.seq
        if (self.last_seq is not None and seq <= self.last_seq) or seq in self._held_seqs:
            return
        heapq.heappush(self._held, (seq, frame))
        self._held_seqs.add(seq)

    def end_recovery(self) -> list[MessageFrame]:
        """Release everything held, oldest first, and go live."""
        self._recovering = False
        released: list[MessageFrame] = []
        while self._held:
            seq, frame = heapq.heappop(self._held)
            self._held_seqs.discard(seq)
            if self.last_seq is None or seq > self.last_seq:
                self.last_seq = seq
                released.append(frame)
        return released
