"""The chat decide-function: every answer a batch of message commands can get, without I/O."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from services.chat.decide import ChatNotes, decide, msg_id
from services.chat.room import Room
from shared import subjects
from shared.schemas.commands import Origin, PostMessage
from shared.schemas.events import ChatMessagePosted, decode_event
from shared.worker import Decision

NOW = 1_767_605_400_000


def post(
    cid: str | None, user: str = "ann", content: str = "hi", late: bool = False
) -> PostMessage:
    return PostMessage(
        requestId=uuid.uuid4().hex,
        contextId="room",
        origin=Origin("gw", f"conn-{user}", user, user.title()),
        content=content,
        messageType="text",
        clientId=cid,
        deadline=NOW - 1 if late else NOW + 5000,
    )


def run(room: Room, cmds: Sequence[PostMessage], allow: bool = True) -> Decision[PostMessage]:
    return decide(room, cmds, NOW, lambda ctx: allow)


def commit(room: Room, decision: Decision[PostMessage], first: int) -> None:
    notes: ChatNotes = decision.extra
    for i, ev in enumerate(notes.new):
        room.apply(ev, first + i)


def test_new_messages_get_the_next_seqs_and_one_event_each_in_order() -> None:
    room = Room("room")
    d = run(room, [post("a"), post("b"), post(None)])
    assert [r.ok["seq"] for r in d.results if r and r.ok] == [1, 2, 3]
    events = [decode_event(data) for _, data in d.events]
    assert [e.seq for e in events if isinstance(e, ChatMessagePosted)] == [1, 2, 3]
    assert d.subject == subjects.chat_messages("room") and d.expect_last == 0
    assert room.seq == 0  # decide changes nothing
    commit(room, d, 10)
    assert room.seq == 3 and room.last_subject_seq == 12 and room.log_seq(2) == 11


def test_a_frame_id_the_room_has_is_answered_with_the_original_and_stores_nothing() -> None:
    room = Room("room")
    first = run(room, [post("a")])
    commit(room, first, 1)
    again = run(room, [post("a")])
    assert again.events == [] and again.results[0] is not None
    assert again.results[0].ok == first.results[0].ok  # type: ignore[union-attr]
    other_user = run(room, [post("a", user="bob")])  # ids are per user
    assert len(other_user.events) == 1


def test_the_same_frame_twice_in_one_batch_is_stored_once() -> None:
    room = Room("room")
    a = post("a")
    d = run(room, [a, post("a"), post(None)])
    assert len(d.events) == 2
    assert d.results[0].ok == d.results[1].ok  # type: ignore[union-attr]
    assert d.results[2].ok["seq"] == 2  # type: ignore[union-attr,index]


def test_a_command_without_id_is_found_again_by_its_request_id() -> None:
    room = Room("room")
    cmd = post(None)
    d = run(room, [cmd])
    commit(room, d, 1)
    redelivered = run(room, [cmd])
    assert redelivered.events == [] and redelivered.results[0].ok["seq"] == 1  # type: ignore[union-attr,index]
    assert len(run(room, [post(None)]).events) == 1  # another frame without id: a new message


def test_past_its_deadline_a_command_is_not_answered_and_stores_nothing() -> None:
    room = Room("room")
    d = run(room, [post("late", late=True), post("ok")])
    assert d.results[0] is None and len(d.events) == 1
    assert d.results[1].ok["seq"] == 1  # type: ignore[union-attr,index]


def test_a_known_duplicate_past_its_deadline_is_still_answered() -> None:
    room = Room("room")
    commit(room, run(room, [post("a")]), 1)
    d = run(room, [post("a", late=True)])
    assert d.results[0] is not None and d.results[0].ok["seq"] == 1  # type: ignore[index]


def test_over_the_room_limit_a_command_is_refused_and_the_next_one_takes_the_seq() -> None:
    room = Room("room")
    verdicts = iter([True, False, True])
    d = decide(room, [post("a"), post("b"), post("c")], NOW, lambda ctx: next(verdicts))
    assert [r.error for r in d.results if r] == [None, "rate_limited", None]
    assert [r.ok["seq"] for r in d.results if r and r.ok] == [1, 2]


def test_a_logged_message_this_process_did_not_broadcast_is_broadcast_again_once() -> None:
    room = Room("room")
    commit(room, run(room, [post("a")]), 1)
    room.mark_unsure_since(NOW - 10_000)  # read back from the log after a restart
    d = run(room, [post("a"), post("a")])
    notes: ChatNotes = d.extra
    assert notes.again == [1] and d.events == []


def test_msg_ids_are_stable_header_safe_and_distinct() -> None:
    a = post("x\r\ny")
    assert msg_id(a) == msg_id(a) and "\r" not in msg_id(a) and "\n" not in msg_id(a)
    assert msg_id(post("x\r\ny", user="bob")) != msg_id(a)
    b = post(None)
    assert msg_id(b) == msg_id(b) and msg_id(post(None)) != msg_id(b)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["ann", "bob"]), st.sampled_from([None, "1", "2", "3"]))))
def test_any_batch_stores_each_frame_once_with_gapless_seqs(
    frames: list[tuple[str, str | None]],
) -> None:
    room = Room("room")
    d = run(room, [post(cid, user=u) for u, cid in frames])
    commit(room, d, 1)
    seqs = [e.seq for e in room.messages]
    assert seqs == list(range(1, len(seqs) + 1))
    keyed = {(u, cid) for u, cid in frames if cid is not None}
    assert len(seqs) == len(keyed) + sum(1 for _, cid in frames if cid is None)
    again = run(room, [post(cid, user=u) for u, cid in frames if cid is not None])
    assert again.events == []
