"""Hold a stream's live frames while a reply that shows the stream's state is being prepared.

Every endpoint has the same problem: a client asks for a picture of something that keeps
changing (chat recovery after ``lastSeq``, an analytics metric's current value, a document in
``session_joined`` or ``snapshot``), and live frames about it keep arriving meanwhile. They must
reach the client after the picture, and without what the picture already shows. So:

- ``hold()`` when the request is read, in frame order (a count: requests may overlap);
- live frames are ``offer``-ed with their position in the stream (a seq, a version) and kept;
- ``release(floor)`` right after the reply is queued: the kept frames above ``floor`` go out in
  order; from then on frames at or below the highest floor seen are dropped (the client has
  them).

Overflow policy of the kept frames: at ``limit``, droppable frames (typing, cursors) are dropped
and anything else calls ``overflow`` (the socket is closed as a slow consumer), as the socket's
own queue does. Sans-I/O: the caller says where frames go (``deliver``).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["HoldGate"]

Deliver = Callable[[str, bool, bool], None]  # (frame text, droppable, lazy)


class HoldGate:
    __slots__ = ("deliver", "overflow", "limit", "floor", "holds", "held", "closed")

    def __init__(self, deliver: Deliver, overflow: Callable[[], None], limit: int) -> None:
        self.deliver = deliver
        self.overflow = overflow
        self.limit = limit
        self.floor = 0  # frames at or below this position are in what the client has
        self.holds = 0
        # Made when a frame is kept: an idle socket's gate holds no list.
        self.held: list[tuple[str, int | None, bool, bool]] | None = None
        self.closed = False  # nothing more is delivered (left, or gone)

    def hold(self) -> None:
        self.holds += 1

    def offer(
        self, text: str, position: int | None = None, droppable: bool = False, lazy: bool = False
    ) -> bool:
        """Deliver or keep one frame; False if it was dropped as already covered. ``lazy``: it
        may wait a little to share a write with others (presence, typing, cursors)."""
        if self.closed or (position is not None and position <= self.floor):
            return False
        if not self.holds:
            if position is not None:
                self.floor = position
            self.deliver(text, droppable, lazy)
        elif self.held is None:
            self.held = [(text, position, droppable, lazy)]
        elif len(self.held) < self.limit:
            self.held.append((text, position, droppable, lazy))
        elif not droppable:
            self.overflow()
        return True

    def release(self, floor: int | None = None, *, discard: bool = False) -> None:
        """The reply is queued: it showed the stream up to ``floor`` (None: says nothing).
        ``discard``: the request came to nothing (refused, or withdrawn meanwhile): the frames
        kept for it go nowhere."""
        if floor is not None and floor > self.floor:
            self.floor = floor
        self.holds = max(self.holds - 1, 0)
        if self.holds:
            return
        held, self.held = self.held or (), None
        if discard:
            return
        for text, position, droppable, lazy in held:
            self.offer(text, position, droppable, lazy)
