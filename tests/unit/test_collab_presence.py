"""The collaboration service's presence keeper with the broker failing under it."""

from __future__ import annotations

from typing import Any

import pytest

from services.collaboration.presence import PresenceKeeper
from services.collaboration.store import DocStore
from shared.bus.memory import MemoryBus
from shared.bus.port import Unavailable
from shared.config import load_settings
from shared.schemas.commands import SessionMember


class FailingNats(MemoryBus):
    def __init__(self) -> None:
        super().__init__()
        self.tries = 0
        self.appends = 0

    async def publish(self, subject: str, data: bytes, headers: Any = None) -> None:
        self.tries += 1
        raise Unavailable("outbound buffer full")

    async def append(self, subject: str, data: bytes, **kw: Any) -> Any:
        self.appends += 1
        raise Unavailable("timeout")


async def test_presence_changes_are_kept_when_neither_log_nor_broadcast_works() -> None:
    nc = FailingNats()
    store = DocStore(load_settings({"AG_JWT_SECRET": "x" * 32}), nc)
    keeper = PresenceKeeper(nc, store, 5.0)
    m = SessionMember("ctx", "s", "c1", "alice", "Alice", "participant")
    await keeper.join("gw", m, 0.0, 1)  # does not raise
    assert keeper.members("ctx", "s") == [
        {"userId": "alice", "username": "Alice", "role": "participant"}
    ]
    await keeper.tick(100.0, 100.0)  # the gateway went silent: left, again without raising
    assert keeper.members("ctx", "s") == [] and nc.tries == 2
    await store.presence_log.stop()  # the joined/left events were tried, failed, logged
    assert nc.appends == 2


async def test_rebuild_from_a_snapshot_and_what_came_after_equals_reading_every_event() -> None:
    """Both pictures (session participants, connected users) saved and read back: a keeper
    starting from the snapshot plus the newer events knows what one reading them all knows."""
    import uuid

    from shared import subjects
    from shared.follow import LogFollower
    from shared.presence_snapshot import decode_snapshot
    from shared.schemas.events import (
        CollabUserConnected,
        CollabUserDisconnected,
        ParticipantJoined,
        ParticipantLeft,
        encode_event,
    )

    bus = MemoryBus()
    settings = load_settings({"AG_JWT_SECRET": "x" * 32})

    async def log(ev: Any) -> int:
        if isinstance(ev, ParticipantJoined | ParticipantLeft):
            subject = subjects.collab_presence(ev.contextId, ev.sessionId)
        else:
            subject = subjects.collab_connections(ev.contextId)
        return (await bus.append(subject, encode_event(ev), msg_id=uuid.uuid4().hex)).seq

    def events(users: range, joined: bool) -> list[Any]:
        out: list[Any] = []
        for i in users:
            ctx, who = f"c{i % 2}", f"u{i}"
            if joined:
                out.append(CollabUserConnected(contextId=ctx, ts=1, userId=who, userName=who))
                out.append(
                    ParticipantJoined(
                        contextId=ctx,
                        ts=1,
                        sessionId=f"s{i % 3}",
                        userId=who,
                        userName=who.upper(),
                        role="editor",
                    )
                )
            else:
                out.append(
                    ParticipantLeft(
                        contextId=ctx, ts=1, sessionId=f"s{i % 3}", userId=who, userName=who
                    )
                )
                out.append(CollabUserDisconnected(contextId=ctx, ts=1, userId=who, userName=who))
        return out

    for ev in events(range(12), True) + events(range(0, 12, 3), False):
        await log(ev)

    def state(k: PresenceKeeper) -> tuple[list[Any], list[Any]]:
        return sorted(k.logged_participants.entries()), sorted(k.logged_online.entries())

    first = PresenceKeeper(bus, DocStore(settings, bus), 5.0)
    follow = LogFollower(bus, [], first.follow, "collaboration", ("collab", first.pictures))
    follow.start(await first.rebuild())
    await follow.stop()  # no filters followed: nothing to save
    assert await bus.snapshot("collab") is None
    snap = LogFollower(
        bus, ["ag.evt.collab.>"], first.follow, "collaboration", ("k", first.pictures)
    )
    snap.start(await bus.log_end())
    await snap.stop()
    up_to, pictures = decode_snapshot(await bus.snapshot("k") or b"")
    assert up_to == await bus.log_end()
    assert sorted(pictures["participants"]) == state(first)[0]
    assert sorted(pictures["online"]) == state(first)[1]

    for ev in events(range(12, 15), True) + events(range(1, 3), False):
        await log(ev)
    everything = PresenceKeeper(bus, DocStore(settings, bus), 5.0)
    await everything.rebuild()  # no snapshot under its key yet: every event
    from services.collaboration.presence import PRESENCE_SNAPSHOT

    await bus.save_snapshot(PRESENCE_SNAPSHOT, await bus.snapshot("k") or b"")
    resumed = PresenceKeeper(bus, DocStore(settings, bus), 5.0)
    await resumed.rebuild()
    assert state(resumed) == state(everything)
    assert resumed.members("c0", "s0") == everything.members("c0", "s0")


async def test_a_join_logged_between_the_two_reads_at_start_is_followed_not_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Start reads participants, then connections: a join another worker logs in between must
    still be read by the follower, which goes on from the log's end as it was before reading."""
    import uuid

    from shared import logscan

    monkeypatch.setattr(logscan, "WHOLE", 0)  # read by subject, one filter after the other
    from shared import subjects
    from shared.schemas.events import CollabUserConnected, ParticipantJoined, encode_event

    class Racing(MemoryBus):
        late: int | None = None

        async def read(self, subject: str, start: int = 1, limit: int = 1_000_000, **kw: Any):  # type: ignore[no-untyped-def]
            if subject == subjects.COLLAB_CONNECTIONS_ALL and self.late is None:
                join = ParticipantJoined(
                    contextId="c", ts=1, sessionId="s", userId="late", userName="L", role="editor"
                )
                done = await self.append(
                    subjects.collab_presence("c", "s"), encode_event(join), msg_id="late"
                )
                self.late = done.seq
                on = CollabUserConnected(contextId="c", ts=1, userId="late", userName="L")
                await self.append(subjects.collab_connections("c"), encode_event(on), msg_id="x")
            return await super().read(subject, start, limit, **kw)

    bus = Racing()
    early = CollabUserConnected(contextId="c", ts=1, userId="early", userName="E")
    await bus.append(subjects.collab_connections("c"), encode_event(early), msg_id=uuid.uuid4().hex)
    keeper = PresenceKeeper(bus, DocStore(load_settings({"AG_JWT_SECRET": "x" * 32}), bus), 5.0)
    follow_from = await keeper.rebuild()
    assert bus.late is not None and follow_from < bus.late  # the follower will read the join
