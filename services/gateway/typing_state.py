"""Typing indicators that lapse (sans-I/O): ``now`` is passed in, expiries are returned."""

from __future__ import annotations

__all__ = ["TypingTracker"]


class TypingTracker:
    """Who is typing in which room, as seen by this gateway's sockets.

    A typing state lapses ``ttl`` seconds after its last renewal; the gateway then tells the room
    ``isTyping: false``, as it does when the typist's last local connection closes.
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._until: dict[
            tuple[str, str], tuple[float, str]
        ] = {}  # (ctx, user) -> (deadline, name)

    def set(self, context_id: str, user_id: str, name: str, typing: bool, now: float) -> bool:
        """Record a typing frame; True if the room should hear about it.

        Renewals are forwarded too (other gateways renew their own copies of the lapse timer).
        """
        key = (context_id, user_id)
        if typing:
            self._until[key] = (now + self.ttl, name)
            return True
        return self._until.pop(key, None) is not None

    def stop(self, context_id: str, user_id: str) -> bool:
        return self._until.pop((context_id, user_id), None) is not None

    def lapsed(self, now: float) -> list[tuple[str, str, str]]:
        out = [(c, u, n) for (c, u), (t, n) in self._until.items() if t <= now]
        for c, u, _ in out:
            del self._until[(c, u)]
        return out

    def next_deadline(self) -> float | None:
        return min((t for t, _ in self._until.values()), default=None)
