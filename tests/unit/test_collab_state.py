"""A document as the collaboration service holds it: commands in, events out, and back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.collaboration.ot_errors import (
    DeleteMismatch,
    OTError,
    SplitsSurrogate,
    TooLarge,
    VersionMismatch,
)
from services.collaboration.state import (
    BadEdit,
    DocState,
    Outcome,
    edit_frame_data,
    snapshot_payload,
    snapshot_text,
)
from services.collaboration.store import edit_msg_id
from shared.errors import protocol
from shared.schemas.commands import EditCommand, Origin
from shared.schemas.events import DocumentSnapshot, EditApplied, decode_event

NOW = 1_000_000


def doc(max_bytes: int = 1 << 20) -> DocState:
    return DocState("ctx", "s", max_history=10, max_bytes=max_bytes)


def cmd(
    operation: str,
    position: int,
    version: int,
    user: str = "ann",
    cid: str | None = None,
    **kw: object,
) -> EditCommand:
    origin = Origin("gw", "conn", user, user.title())
    return EditCommand("r", "ctx", "s", origin, operation, position, version, clientId=cid, **kw)  # type: ignore[arg-type]


def commit(st: DocState, events: list[EditApplied], seq: int) -> int:
    for ev in events:
        seq += 1
        st.record(ev, seq)
    return seq


def test_prepare_applies_and_describes_each_part_as_an_event() -> None:
    st = doc()
    events = st.prepare(cmd("insert", 0, 0, cid="a", content="abcdef"), NOW)
    assert [(e.version, e.operation, e.position, e.content, e.length, e.part) for e in events] == [
        (1, "insert", 0, "abcdef", 6, 0)
    ]
    commit(st, events, 0)
    st.prepare(cmd("insert", 3, 1, user="bob", content="XY"), NOW)  # applied, not recorded yet
    split = st.prepare(cmd("delete", 1, 1, cid="d", length=4, content="bcde"), NOW)
    assert [(e.version, e.position, e.length, e.part) for e in split] == [
        (3, 5, 2, 0),
        (4, 1, 2, 1),
    ]
    assert st.doc.content == "aXYf"
    commit(st, split, 5)
    assert st.duplicate("ann", "d") == Outcome(4, 5, 2)
    assert st.duplicate("bob", "d") is None
    assert st.last_seq == 7


def test_refused_edits_change_nothing_and_map_to_protocol_codes() -> None:
    st = doc(max_bytes=8)
    commit(st, st.prepare(cmd("insert", 0, 0, content="a😀b"), NOW), 0)
    bad: list[tuple[EditCommand, type[OTError], str]] = [
        (cmd("insert", 0, 5, content="x"), VersionMismatch, "version_mismatch"),
        (cmd("insert", 2, 1, content="x"), SplitsSurrogate, "invalid_message"),
        (cmd("delete", 0, 1, length=1, content="z"), DeleteMismatch, "invalid_message"),
        (cmd("insert", 0, 1, content=""), BadEdit, "invalid_message"),
        (cmd("insert", 0, 1, content="x", length=2), BadEdit, "invalid_message"),
        (cmd("delete", 0, 1), BadEdit, "invalid_message"),
        (cmd("move", 0, 1), BadEdit, "invalid_message"),
        (cmd("insert", 0, 1, content="éééé"), TooLarge, "too_large"),
    ]
    for c, exc, code in bad:
        with pytest.raises(exc) as info:
            st.prepare(c, NOW)
        assert protocol(info.value).code == code
    assert st.doc.content == "a😀b" and st.doc.version == 1
    with pytest.raises(VersionMismatch) as info:
        st.prepare(cmd("insert", 0, 9, content="x"), NOW)
    assert protocol(info.value).data == {"version": 1}
    with pytest.raises(TooLarge) as big:
        st.prepare(cmd("insert", 0, 1, content="é" * 9), NOW)
    assert protocol(big.value).data == {"limit": 8}


def test_an_edit_that_transforms_to_nothing_is_remembered_with_the_current_version() -> None:
    st = doc()
    commit(st, st.prepare(cmd("insert", 0, 0, content="abc"), NOW), 0)
    commit(st, st.prepare(cmd("delete", 0, 1, user="bob", length=3), NOW), 1)
    assert st.prepare(cmd("delete", 1, 1, cid="late", length=1), NOW) == []
    assert st.unchanged(cmd("delete", 1, 1, cid="late", length=1), NOW) == Outcome(2, 1, 0)
    assert st.duplicate("ann", "late") == Outcome(2, 1, 0)


def test_a_rebuild_from_snapshot_and_events_gives_the_same_document_and_dedup() -> None:
    st = doc()
    log: list[tuple[EditApplied, int]] = []
    seq = 0
    for i in range(6):
        events = st.prepare(cmd("insert", 0, st.doc.version, cid=f"c{i}", content=str(i)), NOW + i)
        for ev in events:
            seq += 2  # other subjects interleave in the stream
            st.record(ev, seq)
            log.append((ev, seq))
        if st.snapshot_due(4):
            snap = st.snapshot_event(NOW + i, horizon_ms=NOW + 2)
            st.snapshot_version = snap.version
    assert (snap.version, snap.editSeq, snap.dedupFrom) == (4, 8, 6)  # c2 is the oldest in window
    assert DocState.replay_from(snap) == 6
    stored = decode_event(snapshot_payload(snap, 1 << 20))
    assert isinstance(stored, DocumentSnapshot)
    again = doc()
    again.restore(stored, stored, 99)
    for ev, s in log:
        if s >= DocState.replay_from(stored):
            again.replay(ev, s, horizon_ms=NOW + 2)
    assert (again.doc.content, again.doc.version, again.last_seq) == (st.doc.content, 6, 12)
    assert again.duplicate("ann", "c2") == Outcome(3, 0, 1)  # before the snapshot, in the window
    assert again.duplicate("ann", "c5") == Outcome(6, 0, 1)
    assert again.duplicate("ann", "c1") is None  # outside the window
    again.forget_before(NOW + 4)
    assert again.duplicate("ann", "c3") is None and again.duplicate("ann", "c4") is not None


def test_the_replay_starts_after_the_oldest_snapshot_read_or_at_the_dedup_window() -> None:
    assert DocState.replay_from() == 1
    old = DocumentSnapshot(contextId="ctx", ts=0, sessionId="s", version=3, content="abc")
    assert DocState.replay_from(old) == 1  # written before editSeq existed
    prev = DocumentSnapshot(contextId="ctx", ts=0, sessionId="s", version=3, content="", editSeq=10)
    newest = DocumentSnapshot(
        contextId="ctx", ts=0, sessionId="s", version=6, content="", editSeq=20, dedupFrom=15
    )
    assert DocState.replay_from(prev, newest) == 11
    assert DocState.replay_from(newest) == 15


def test_snapshots_chain_to_the_one_before() -> None:
    st = doc()
    commit(st, st.prepare(cmd("insert", 0, 0, content="a"), NOW), 0)
    first = st.snapshot_event(NOW, NOW)
    assert first.previousSeq == 0
    st.snapshot_version, st.snapshot_seq = first.version, 42
    commit(st, st.prepare(cmd("insert", 0, 1, content="b"), NOW), 1)
    assert st.snapshot_event(NOW, NOW).previousSeq == 42
    # a rebuild from the previous snapshot still knows the newest one, for the next snapshot
    again = doc()
    again.restore(first, st.snapshot_event(NOW, NOW), 50)
    assert (again.doc.content, again.snapshot_version, again.snapshot_seq) == ("a", 2, 50)


def test_a_snapshot_too_big_for_one_message_is_stored_compressed() -> None:
    text = "\x01" * 5000 + "😀"  # every control character is six bytes of JSON
    snap = DocumentSnapshot(contextId="c", ts=0, sessionId="s", version=9, content=text, editSeq=4)
    small = snapshot_payload(snap, 10_000)
    assert len(small) < 10_000 and json.loads(small)["content"] == ""
    back = decode_event(small)
    assert isinstance(back, DocumentSnapshot) and snapshot_text(back) == text and back.editSeq == 4
    plain = decode_event(snapshot_payload(snap, 1 << 20))
    assert isinstance(plain, DocumentSnapshot) and plain.content == text and not plain.contentZlib


def test_edit_frames_and_message_ids() -> None:
    common: dict[str, Any] = {"contextId": "c", "ts": 0, "sessionId": "s", "version": 2}
    common |= {"position": 1, "userId": "u", "userName": "U", "length": 2}
    ins = EditApplied(operation="insert", content="hi", clientId="x\r\ny", part=1, **common)
    assert edit_frame_data(ins) == {
        "sessionId": "s",
        "operation": "insert",
        "position": 1,
        "length": 2,
        "version": 2,
        "author": {"id": "u", "name": "U"},
        "content": "hi",
    }
    msg_id = edit_msg_id(ins)
    assert msg_id.endswith(":1") and "\r" not in msg_id and "\n" not in msg_id
    assert edit_msg_id(ins) == msg_id  # derived, so a redelivered command is stored once
    anon = EditApplied(operation="delete", **common)
    assert "content" not in edit_frame_data(anon)
    assert edit_msg_id(anon) != edit_msg_id(anon)  # no client id: nothing to deduplicate on


def test_logged_edits_not_broadcast_by_this_process_are_unsent_once() -> None:
    st = doc()
    first = st.prepare(cmd("insert", 0, 0, cid="a", content="abcdef"), NOW)
    commit(st, first, 0)
    concurrent = st.prepare(cmd("insert", 3, 1, user="bob", cid="b", content="X"), NOW)
    commit(st, concurrent, 1)
    split = st.prepare(cmd("delete", 1, 1, user="cy", cid="c", length=4), NOW)
    assert len(split) == 2
    # applied and logged here, but the broadcast did not happen (yet): unsent
    commit(st, split, 2)
    assert st.unsent("cy", "c") == split
    st.broadcast(split[0])
    assert st.unsent("cy", "c") == split  # half out is not out
    st.broadcast(split[1])
    assert st.unsent("cy", "c") == [] and st.unsent("cy", None) == []
    assert st.unsent("nobody", "c") == []
    # read back from the log (a restart): nothing counts as broadcast by the new process
    again = doc()
    for seq, ev in enumerate([*first, *concurrent, *split], start=1):
        again.replay(ev, seq, horizon_ms=NOW)
    assert again.duplicate("cy", "c") == Outcome(4, split[0].position, 2)
    assert again.unsent("cy", "c") == split and again.unsent("ann", "a") == first
    for ev in again.unsent("cy", "c"):
        again.broadcast(ev)
    assert again.unsent("cy", "c") == [] and again.unsent("ann", "a") == first
