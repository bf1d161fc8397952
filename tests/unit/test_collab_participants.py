"""Collaboration session presence (sans-I/O): one participant per user and session."""

from __future__ import annotations

from services.collaboration.participants import Change, Participants
from shared.schemas.commands import SessionMember


def m(user: str, conn: str, session: str = "s", role: str = "participant") -> SessionMember:
    return SessionMember("ctx", session, conn, user, user.title(), role)


def test_first_connection_joins_and_last_one_leaves() -> None:
    p = Participants()
    assert p.open("gw", m("ann", "c1"), 0.0) == Change(
        "joined", "ctx", "s", "ann", "Ann", "participant"
    )
    assert p.open("gw2", m("ann", "c2", role="observer"), 0.0) is None
    assert p.close("gw", "c1", "s") is None
    assert p.members("ctx", "s") == [{"userId": "ann", "username": "Ann", "role": "observer"}]
    left = p.close("gw2", "c2", "s")
    assert left is not None and left.kind == "left" and left.user_id == "ann"
    assert p.members("ctx", "s") == []


def test_sessions_are_separate_even_on_one_connection() -> None:
    p = Participants()
    assert p.open("gw", m("ann", "c1", "a"), 0.0) is not None
    assert p.open("gw", m("ann", "c1", "b"), 0.0) is not None
    assert p.close("gw", "c1", "a") is not None
    assert [x["userId"] for x in p.members("ctx", "b")] == ["ann"]


def test_the_listed_role_is_the_strongest_of_the_users_tabs() -> None:
    p = Participants()
    p.open("gw", m("ann", "c1", role="observer"), 0.0)
    p.open("gw", m("ann", "c2", role="host"), 0.0)
    p.open("gw", m("bob", "c3"), 0.0)
    assert p.members("ctx", "s") == [
        {"userId": "ann", "username": "Ann", "role": "host"},
        {"userId": "bob", "username": "Bob", "role": "participant"},
    ]


def test_unknown_close_changes_nothing() -> None:
    p = Participants()
    assert p.close("gw", "nope", "s") is None


def test_heartbeat_reconciles_and_keeps_members_opened_after_it_was_composed() -> None:
    p = Participants()
    p.open("gw", m("ann", "c1"), 0.0, seq=1)
    p.open("gw", m("bob", "c2"), 0.0, seq=5)
    # composed at seq 3: knows c1 gone and carol's c3 new, but not bob's later open
    changes = p.heartbeat("gw", [m("carol", "c3")], 1.0, seq=3)
    assert sorted((c.kind, c.user_id) for c in changes) == [("joined", "carol"), ("left", "ann")]
    assert [x["userId"] for x in p.members("ctx", "s")] == ["bob", "carol"]


def test_final_heartbeat_and_silence_drop_a_gateways_members() -> None:
    p = Participants()
    p.open("gw1", m("ann", "c1"), 0.0)
    p.open("gw2", m("bob", "c2"), 0.0)
    assert [c.user_id for c in p.heartbeat("gw1", [], 1.0, final=True)] == ["ann"]
    assert p.expire(5.0, timeout=10.0) == []
    assert [c.user_id for c in p.expire(11.0, timeout=10.0)] == ["bob"]


def test_after_a_restart_the_log_counts_until_settled() -> None:
    p = Participants()
    p.assume("ctx", "s", "ann", "Ann", "host", True)
    p.assume("ctx", "s", "bob", "Bob", "participant", True)
    p.assume("ctx", "s", "gone", "Gone", "participant", True)
    p.assume("ctx", "s", "gone", "Gone", "", False)
    assert [x["userId"] for x in p.members("ctx", "s")] == ["ann", "bob"]
    # ann's gateway reports her: no second join
    assert p.heartbeat("gw", [m("ann", "c1", role="host")], 1.0) == []
    left = p.settle()
    assert [(c.kind, c.user_id, c.role) for c in left] == [("left", "bob", "participant")]
    assert [x["userId"] for x in p.members("ctx", "s")] == ["ann"]
    assert p.settle() == []
