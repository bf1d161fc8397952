"""A room's messages read straight from the log: its subject is the room's database.

A room's message events sit on one subject, spread over the stream's sequences. Room ``seq``
and (nearly) timestamps grow with the stream sequence, so the first message with a seq or a
time at or past a target is found by searching stream sequences: each probe is one read of the
first messages at or after a sequence (a batched direct get). Probes alternate between
interpolation (a room's messages are spread about evenly over the stream, so a guess from the
keys at both ends lands close: a few probes) and bisection (so an uneven room still takes at
most ~2·log2 of the stream's length). A page is then one more read from there. Nothing is
indexed or kept in memory for this.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from shared import subjects
from shared.bus.port import Bus, Entry
from shared.eventlog import decode_logged
from shared.schemas.events import ChatMessagePosted

__all__ = ["Hit", "RoomLog"]

PROBE = 8  # entries a probe reads: one message, or past a few undecodable ones
SLACK = 32  # a probe this close below a wanted seq is close enough: read on from there


@dataclass(frozen=True, slots=True)
class Hit:
    entry: Entry
    event: ChatMessagePosted


class RoomLog:
    """One room's subject, for one request: the first and last entries are read once."""

    def __init__(self, bus: Bus, context_id: str) -> None:
        self.bus = bus
        self.context_id = context_id
        self.subject = subjects.chat_messages(context_id)
        self._last: Entry | None = None
        self._last_read = False
        self._first: Hit | None = None
        self._first_read = False
        self._last_hit: Hit | None = None
        self._last_hit_read = False
        self.probes = 0  # reads made to find a position (for the benchmark's curiosity)

    def _messages(self, entries: list[Entry]) -> list[Hit]:
        out = []
        for e in entries:
            ev = decode_logged(e.data, e.seq, e.subject, "chat")
            if isinstance(ev, ChatMessagePosted):
                out.append(Hit(e, ev))
        return out

    async def last(self) -> Entry | None:
        """The subject's last entry (a message, or something undecodable)."""
        if not self._last_read:
            self._last = (await self.bus.last([self.subject])).get(self.subject)
            self._last_read = True
        return self._last

    async def last_hit(self) -> tuple[Entry | None, Hit | None]:
        """The subject's last entry, and it as a message if it is one (decoded once)."""
        if not self._last_hit_read:
            end = await self.last()
            hits = self._messages([end]) if end is not None else []
            self._last_hit = hits[0] if hits else None
            self._last_hit_read = True
        return self._last, self._last_hit

    async def first_at(self, start: int) -> Hit | None:
        """The first message at or after stream sequence ``start``."""
        if start <= 1 and self._first_read:
            return self._first
        hit = await self._first_at(start)
        if start <= 1:
            self._first, self._first_read = hit, True
        return hit

    async def _first_at(self, start: int) -> Hit | None:
        while True:
            self.probes += 1
            entries = await self.bus.read(self.subject, start, PROBE)
            if not entries:
                return None
            hits = self._messages(entries)
            if hits:
                return hits[0]
            start = entries[-1].seq + 1

    async def seek(self, key: Callable[[ChatMessagePosted], int], target: int) -> Hit | None:
        """The first message whose ``key`` (non-decreasing in log order) is ``target`` or more."""
        first = await self.first_at(1)
        if first is None or key(first.event) >= target:
            return first
        end, high = await self.last_hit()  # high: the first message at or after b
        assert end is not None  # there is a first message
        if high is not None and key(high.event) < target:
            return None
        # Messages before a have key < target (the last of them: klo); the first message at or
        # after b is `high` (key >= target), or none when it is not known (then: bisect only).
        a, b, klo = (
            first.entry.seq + 1,
            end.seq if high is not None else end.seq + 1,
            key(first.event),
        )
        guess = True
        while a < b:
            if guess and high is not None:
                frac = (target - klo) / max(key(high.event) - klo, 1)
                mid = min(max(a + int(frac * (b - a)), a), b - 1)
            else:
                mid = (a + b) // 2
            guess = not guess
            hit = await self.first_at(mid)
            if hit is None or hit.entry.seq >= b:
                b = mid  # nothing in [mid, b): the first at or after mid is still `high`
            elif key(hit.event) >= target:
                b, high = mid, hit
            else:
                a, klo = hit.entry.seq + 1, key(hit.event)
        return high if high is not None else await self.first_at(a)

    async def from_seq(self, seq: int, count: int) -> list[Hit]:
        """The messages with room seq ``seq`` and after, ``count`` at most, in order.

        Room seqs have no gaps, so a probe that lands on message k a little below ``seq`` is as
        good as the exact one: the read just starts there. Probes aim a little below ``seq``."""
        below = await self._below(seq)
        if below is None:
            return []
        need = count + max(seq - below.event.seq, 0)
        return [h for h in await self._read(below, need) if h.event.seq >= seq][:count]

    async def _below(self, seq: int) -> Hit | None:
        """A message with room seq at most ``seq`` and within ``SLACK`` of it, or the next one
        below a jump; the first message if ``seq`` is before it; None past the room's end."""
        if seq <= SLACK + 1:
            return await self.first_at(1)
        end, high = await self.last_hit()
        if end is None:
            return None
        if high is None:  # the last entry is not a message: bisect without a known upper key
            return await self.seek(lambda e: e.seq, seq - SLACK)
        if high.event.seq < seq:
            return None  # past the room's end
        # The low end starts as "message 0 before stream sequence 1": no probe for the first.
        low: Hit | None = None
        lo_seq, lo_entry = 0, 0
        a, b, guess = 1, high.entry.seq, True
        while a < b and seq - lo_seq > SLACK:
            if guess:  # aim halfway into the slack, so the probe lands just below
                frac = (seq - SLACK // 2 - lo_seq) / max(high.event.seq - lo_seq, 1)
                mid = min(max(lo_entry + 1 + int(frac * (b - lo_entry - 1)), a), b - 1)
            else:
                mid = (a + b) // 2
            guess = not guess
            hit = await self.first_at(mid)
            if hit is None or hit.entry.seq >= b:
                b = mid
            elif hit.event.seq >= seq:
                b, high = mid, hit
            else:
                low, a = hit, hit.entry.seq + 1
                lo_seq, lo_entry = hit.event.seq, hit.entry.seq
        if low is None:  # nothing probed below seq: the room starts within reach of it
            return await self.first_at(1)
        return low

    async def _read(self, hit: Hit, count: int) -> list[Hit]:
        """``count`` messages from ``hit`` on, in order (fewer at the end of the room)."""
        out: list[Hit] = []
        start = hit.entry.seq
        while len(out) < count:
            # Exactly what is missing the first time (every extra entry asked for costs the
            # server a longer scan); after entries that were not messages, a few more at once.
            want = count - len(out) if start == hit.entry.seq else max(count - len(out), PROBE)
            entries = await self.bus.read(self.subject, start, want)
            if not entries:
                break
            out.extend(self._messages(entries))
            start = entries[-1].seq + 1
        return out[:count]

    async def history(
        self, last: int, limit: int, before_ms: int | None, before_seq: int | None
    ) -> tuple[list[ChatMessagePosted], bool]:
        """``Room.history`` on the room's subject (``last``: the room's seq): the newest
        ``limit`` before the cursors, and hasMore."""
        end = last + 1  # the seq after the page
        if before_seq is not None:
            end = min(end, max(before_seq, 1))
        if before_ms is not None:
            at = await self.seek(lambda e: e.ts, before_ms)
            if at is not None:
                end = min(end, at.event.seq)
        start = max(1, end - limit)
        if end <= start:
            return [], False
        page = [h.event for h in await self.from_seq(start, end - start) if h.event.seq < end]
        return page, start > 1

    async def after(self, last: int, seq: int, cap: int) -> tuple[list[ChatMessagePosted], bool]:
        """``Room.after`` on the room's subject."""
        missed = last - max(seq, 0)
        if missed > cap:
            return [], True
        if missed <= 0:
            return [], False
        hits = await self.from_seq(seq + 1, missed)
        return [h.event for h in hits if h.event.seq <= last], False
