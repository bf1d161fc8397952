"""Scale-out: chat and collaboration partitioned over worker processes, with takeover.

Real processes on a real nats-server: three chat workers, two gateways, rooms with senders on
one gateway and receivers on the other. One worker is SIGKILLed mid-traffic: its partition
leases lapse and the others take them over; then a worker joins again and partitions
rebalance. Nothing acknowledged is lost or stored twice, and every receiver sees its room's
messages once, in ``seq`` order.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from shared import subjects
from shared.eventlog import decode_logged
from shared.partitions import chat_partition, collab_partition
from shared.schemas.events import (
    ChatMessagePosted,
    EditApplied,
    ParticipantJoined,
    ParticipantLeft,
    UserJoined,
    UserLeft,
)
from tests.conftest import T
from tests.helpers import (
    Client,
    Stack,
    log_entries,
    token,
)
from tests.integration.load_support import ChatLoad, Editors, Progress
from tests.integration.scale_support import spread, start_worker, start_workers
from tests.integration.sdk_support import poll

ROOMS = 50
RATE = 2.0  # messages per second per room
SCALE_ENV = {"AG_RECOVERY_MAX": "1000", "AG_COMMAND_TIMEOUT_S": "2"}


def room_loads(stack: Stack, progress: Progress) -> dict[str, ChatLoad]:
    """One sender (gateway 0) and one receiver (gateway 1) per room, sharing one progress."""
    loads: dict[str, ChatLoad] = {}
    for i in range(ROOMS):
        room = f"room-{i}"

        def url(user: str, last: int | None, room: str = room) -> str:
            gw = 0 if user.startswith("s") else 1
            extra = {} if last is None else {"lastSeq": last}
            return stack.url(gateway=gw, token=token(user, room), contextId=room, **extra)

        load = ChatLoad(url, senders=1, receivers=1, rate=RATE)
        load.progress = progress
        for member in (*load.senders, *load.receivers):
            member.progress = progress
        loads[room] = load
    return loads


def acked(loads: dict[str, ChatLoad]) -> int:
    return sum(len(load.acked) for load in loads.values())


async def test_chat_workers_take_over_a_killed_workers_rooms_and_rebalance(
    make_stack: Any, nc: Any, tmp_path: Path
) -> None:
    stack: Stack = await make_stack(env=SCALE_ENV, chat=False, gateways=0)
    leases, workers = await start_workers(stack, nc, "chat", 3)
    stack.start_gateway()
    stack.start_gateway()

    progress = Progress()
    loads = room_loads(stack, progress)
    for load in loads.values():
        await load.start()
    await progress.until(lambda: acked(loads) >= ROOMS * 2, 60, "traffic in every room")

    # SIGKILL a worker mid-traffic; the others take its partitions once its leases lapse.
    victim = "chat-2"
    owners = await leases.owners()
    orphaned = {p for p, w in owners.items() if w == victim}
    affected = [r for r in loads if chat_partition(r, 16) in orphaned]
    assert affected, "the victim owned no room of the test"
    before = {r: len(loads[r].acked) for r in affected}
    killed = time.monotonic()
    stack.services[victim].stop(signal.SIGKILL)
    await leases.until(
        lambda o: all(o.get(p) in workers - {victim} for p in orphaned), 15, "takeover"
    )
    takeover = time.monotonic() - killed
    await progress.until(
        lambda: all(len(loads[r].acked) > before[r] for r in affected),
        30,
        "acks again in every room of the killed worker",
    )
    acks_back = time.monotonic() - killed

    # A worker joins again: the others give partitions up, it claims them; no two owners.
    start_worker(stack, "chat", victim, "services.chat")
    rejoined = time.monotonic()
    await leases.until(lambda o: spread(o, workers), 30, "rebalanced over 3 workers")
    rebalance = time.monotonic() - rejoined
    mark = acked(loads)
    await progress.until(lambda: acked(loads) >= mark + ROOMS, 60, "traffic after rebalance")

    tops = {r: await load.finish() for r, load in loads.items()}
    lost: list[str] = []
    doubled: list[str] = []
    problems: list[str] = []
    total = 0
    for room, load in loads.items():
        entries = await log_entries(nc, subjects.chat_messages(room))
        messages = [decode_logged(e.data, e.seq, e.subject, "test") for e in entries]
        posted = [m for m in messages if isinstance(m, ChatMessagePosted)]
        stored = Counter(m.clientId for m in posted)
        lost += [cid for cid in load.acked if cid not in stored]
        doubled += [cid for cid, n in stored.items() if n > 1]
        seqs = {m.clientId: m.seq for m in posted}
        problems += [
            f"{cid}: acked {s}, stored {seqs.get(cid)}"
            for cid, s in load.acked.items()
            if seqs.get(cid) != s
        ]
        if [m.seq for m in posted] != list(range(1, len(posted) + 1)):
            problems.append(f"{room}: seqs not 1..n")
        problems += load.problems()
        problems += [
            f"{room}: receiver at {r.last} of {tops[room]}"
            for r in load.receivers
            if r.last != tops[room] or r.last != len(posted)
        ]
        total += len(load.acked)
    print(
        f"\n[scale-out chat] 3 workers, {ROOMS} rooms, acked {total}, lost {len(lost)},"
        f" doubled {len(doubled)}, order problems {len(problems)};"
        f" takeover {takeover:.2f}s (leases), acks back in every affected room {acks_back:.2f}s;"
        f" rebalance after rejoin {rebalance:.2f}s"
    )
    assert not lost and not doubled, (lost[:5], doubled[:5])
    assert not problems, problems[:10]
    assert takeover <= T(8)


DOCS = 8


async def test_collaboration_workers_take_over_a_killed_workers_documents(
    make_stack: Any, nc: Any
) -> None:
    """Two collaboration workers, editors of each document on both gateways: SIGKILL one worker
    mid-editing, then start it again. Every client converges with the server, every edit is
    applied once, every typed word is in the document once."""
    stack: Stack = await make_stack(env=SCALE_ENV, gateways=0)
    leases, workers = await start_workers(stack, nc, "collab", 2)
    stack.start_gateway()
    stack.start_gateway()
    urls = [stack.url("/api/collaboration/ws", gateway=g) for g in (0, 1)]
    groups = {
        f"doc-{i}": Editors(urls, "course-c", f"doc-{i}", editors=2, pause=0.2, prefix=f"d{i}e")
        for i in range(DOCS)
    }
    for editors in groups.values():
        await editors.start()
    await _until(lambda: all(len(e.typed) >= 6 for e in groups.values()), 30, "typing")

    victim = "collab-1"
    owners = await leases.owners()
    orphaned = {p for p, w in owners.items() if w == victim}
    killed = time.monotonic()
    stack.services[victim].stop(signal.SIGKILL)
    await leases.until(lambda o: all(o.get(p) == "collab-2" for p in orphaned), 15, "takeover")
    takeover = time.monotonic() - killed
    start_worker(stack, "collab", victim, "services.collaboration")
    await leases.until(lambda o: spread(o, workers), 30, "rebalanced over 2 workers")
    mark = {d: len(e.typed) for d, e in groups.items()}
    await _until(lambda: all(len(e.typed) >= mark[d] + 4 for d, e in groups.items()), 30, "more")

    moved = [d for d in groups if collab_partition("course-c", d, 16) in orphaned]
    for doc, editors in groups.items():
        content, docs = await editors.finish()
        assert docs == [content] * len(docs), doc
        entries = await log_entries(nc, subjects.collab_edits("course-c", doc))
        edits = [decode_logged(e.data, e.seq, e.subject, "test") for e in entries]
        applied = Counter((e.userId, e.clientId) for e in edits if isinstance(e, EditApplied))
        assert all(n == 1 for n in applied.values()), doc
        assert sorted(w for w in editors.typed if w in content) == sorted(editors.typed), doc
        assert all(content.count(w) == 1 for w in editors.typed), doc
    typed = sum(len(e.typed) for e in groups.values())
    print(
        f"\n[scale-out collaboration] 2 workers, {DOCS} documents x 2 editors on 2 gateways,"
        f" {typed} edits, {len(moved)} documents moved; takeover {takeover:.2f}s (leases)"
    )
    assert takeover <= T(8)


async def _until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + T(timeout)
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)  # the editors type on their own tasks


def _user(user: str) -> Any:
    return lambda f: f["data"]["userId"] == user


async def test_presence_has_no_zombies_after_a_gateway_or_a_worker_is_killed(
    make_stack: Any, nc: Any
) -> None:
    """Two chat workers, two gateways, an observer in one room. A gateway is SIGKILLed: its
    user is announced as gone once the gateway's heartbeats stop. The room's owner is SIGKILLed
    and a user leaves before anyone took the room over: the next owner compares who is there
    with what the log says and announces the leave. The log ends where the room is."""
    stack: Stack = await make_stack(env=SCALE_ENV, chat=False, gateways=0)
    leases, workers = await start_workers(stack, nc, "chat", 2)
    stack.start_gateway()
    stack.start_gateway()
    room = "presence-room"

    async def join(user: str, gateway: int) -> Client:
        url = stack.url(gateway=gateway, token=token(user, room), contextId=room)
        client = await Client.connect(url)
        await client.expect("connected")
        return client

    observer = await join("obs", 0)
    await join("zed", 1)
    await observer.expect("user_joined", 10, where=_user("zed"))
    killed = time.monotonic()
    stack.gateways[1][0].stop(signal.SIGKILL)
    await observer.expect("user_left", 30, where=_user("zed"))
    gateway_gone = time.monotonic() - killed

    amy = await join("amy", 0)
    await observer.expect("user_joined", 10, where=_user("amy"))
    owner = (await leases.owners())[chat_partition(room, 16)]
    killed = time.monotonic()
    stack.services[owner].stop(signal.SIGKILL)
    await amy.close()  # gone while the room has no owner: nobody announces it yet
    await observer.expect("user_left", 30, where=_user("amy"))
    worker_gone = time.monotonic() - killed

    want = {"obs": "joined", "zed": "left", "amy": "left"}
    last = await _logged_presence(nc, subjects.chat_presence(room), want)
    heartbeat = float(stack.env["AG_HEARTBEAT_S"])
    print(
        f"\n[scale-out presence] heartbeat {heartbeat}s: a killed gateway's user left after"
        f" {gateway_gone:.2f}s ({gateway_gone / heartbeat:.1f} beats); a user who left while"
        f" the room's worker was dead was announced after {worker_gone:.2f}s (takeover)"
    )
    assert last == want


async def test_collaboration_presence_after_a_worker_is_killed_has_no_zombies(
    make_stack: Any, nc: Any
) -> None:
    """A participant who leaves while the session's worker is dead is announced as gone by the
    worker that takes the session over, and the log says so too."""
    stack: Stack = await make_stack(env=SCALE_ENV, gateways=0)
    leases, workers = await start_workers(stack, nc, "collab", 2)
    stack.start_gateway()
    ctx, session = "course-p", "notes"

    async def join(user: str) -> Client:
        url = stack.url("/api/collaboration/ws", token=token(user, ctx), contextId=ctx)
        client = await Client.connect(url)
        await client.expect("connected")
        await client.send({"type": "join_session", "id": "j", "data": {"sessionId": session}})
        await client.expect("session_joined", 10)
        return client

    observer = await join("obs")
    amy = await join("amy")
    await observer.expect("participant_joined", 10, where=_user("amy"))
    owner = (await leases.owners())[collab_partition(ctx, session, 16)]
    killed = time.monotonic()
    stack.services[owner].stop(signal.SIGKILL)
    await amy.close()
    await observer.expect("participant_left", 30, where=_user("amy"))
    gone = time.monotonic() - killed
    want = {"obs": "joined", "amy": "left"}
    last = await _logged_presence(nc, subjects.collab_presence(ctx, session), want)
    print(
        f"\n[scale-out presence] collaboration: a leave during a takeover announced"
        f" after {gone:.2f}s"
    )
    assert last == want


async def _logged_presence(nc: Any, subject: str, want: dict[str, str]) -> dict[str, str]:
    """Each user's last presence event in the log, once it says ``want`` (or the deadline):
    the owner logs presence in the background, so the log may trail the broadcast a little."""

    async def last() -> dict[str, str]:
        state: dict[str, str] = {}
        for e in await log_entries(nc, subject):
            ev = decode_logged(e.data, e.seq, e.subject, "test")
            if isinstance(ev, UserJoined | ParticipantJoined):
                state[ev.userId] = "joined"
            elif isinstance(ev, UserLeft | ParticipantLeft):
                state[ev.userId] = "left"
        return state

    async def settled() -> bool:
        return await last() == want

    with contextlib.suppress(TimeoutError):  # the assertion after shows what it said instead
        await poll(settled, 10, "the log to show the presence")
    return await last()
