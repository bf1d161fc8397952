"""Where one chat room's message stream stands on this gateway (sans-I/O).

Every socket must receive a room's ``message`` frames in ``seq`` order, each once and without a
gap, whatever happens behind the gateway: a chat service that dies between an append and its
broadcast, two services racing during a restart, a gateway that lost its NATS link for a while.
So order is kept here, on the path to the sockets, not hoped for upstream: a frame older than
what was handed out is dropped, the next one goes through, and one that leaves a gap waits until
the missing messages have been read back from the log (the source of truth) and handed out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["RoomOrder", "Verdict"]

Verdict = Literal["next", "old", "gap"]


@dataclass(slots=True)
class RoomOrder:
    """``last``: the highest seq handed to the room's sockets (None until known: the first
    frame then sets it). ``log_seq``: that message's stream sequence (0 when not known), where
    reading the log for a gap starts."""

    last: int | None = None
    log_seq: int = 0

    def check(self, seq: int) -> Verdict:
        if self.last is None or seq == self.last + 1:
            return "next"
        return "old" if seq <= self.last else "gap"

    def missing(self, upto: int) -> int:
        """How many messages lie between what was handed out and ``upto`` (exclusive)."""
        return 0 if self.last is None else max(upto - self.last - 1, 0)

    def advance(self, seq: int, log_seq: int | None) -> None:
        """``seq`` was handed out (or the stream was reset to it)."""
        self.last = seq
        if log_seq is not None:
            self.log_seq = log_seq
