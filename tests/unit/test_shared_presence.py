"""The generic presence core (sans-I/O): rooms keyed by anything, a payload per connection."""

from __future__ import annotations

from collections.abc import Sequence

from shared.presence import Change, Member, PresenceCore, Present

Room = tuple[str, str]
_RANK = {"low": 0, "mid": 1, "high": 2}


def strongest(payloads: Sequence[str]) -> str:
    return max(payloads, key=lambda p: _RANK[p])


def core(**options: bool) -> PresenceCore[Room, str, str]:
    return PresenceCore(strongest, **options)


def mem(user: str, room: Room = ("c", "r"), payload: str = "mid") -> Member[Room, str]:
    return Member(room, user, user.title(), payload)


def users(p: PresenceCore[Room, str, str], room: Room = ("c", "r")) -> list[str]:
    return [u.user_id for u in p.present(room)]


def test_first_in_joins_and_last_out_leaves_across_gateways() -> None:
    p = core()
    assert p.open("gw1", "1", mem("ann"), 0.0) == Change("joined", ("c", "r"), "ann", "Ann", "mid")
    assert p.open("gw2", "2", mem("ann", payload="low"), 0.0) is None
    assert p.close("gw1", "1") is None
    assert p.present(("c", "r")) == [Present("ann", "Ann", "low")]
    assert p.close("gw2", "2") == Change("left", ("c", "r"), "ann", "Ann", "low")
    assert p.present(("c", "r")) == []


def test_rooms_are_separate_and_unknown_closes_change_nothing() -> None:
    p = core()
    p.open("gw", "1", mem("ann", ("c", "a")), 0.0)
    p.open("gw", "2", mem("ann", ("c", "b")), 0.0)
    assert p.close("gw", "nope") is None
    assert p.close("other", "1") is None
    assert p.close("gw", "1") is not None
    assert users(p, ("c", "a")) == [] and users(p, ("c", "b")) == ["ann"]


def test_the_listed_payload_combines_the_users_connections() -> None:
    p = core()
    p.open("gw1", "1", mem("ann", payload="low"), 0.0)
    p.open("gw2", "2", mem("ann", payload="high"), 0.0)
    p.open("gw1", "3", mem("bob", payload="low"), 0.0)
    assert p.present(("c", "r")) == [Present("ann", "Ann", "high"), Present("bob", "Bob", "low")]
    p.close("gw2", "2")
    assert p.present(("c", "r"))[0] == Present("ann", "Ann", "low")
    # re-opening a connection replaces its payload
    p.open("gw1", "1", mem("ann", payload="mid"), 0.0)
    assert p.present(("c", "r"))[0] == Present("ann", "Ann", "mid")


def test_default_combine_takes_the_oldest_connections_payload() -> None:
    p: PresenceCore[str, str, int] = PresenceCore()
    p.open("gw", "1", Member("room", "ann", "Ann", 1), 0.0)
    p.open("gw", "2", Member("room", "ann", "Ann", 2), 0.0)
    assert p.present("room") == [Present("ann", "Ann", 1)]


def test_heartbeat_reconciles_a_gateways_connections() -> None:
    p = core()
    p.open("gw", "1", mem("ann"), 0.0, seq=1)
    p.open("other", "9", mem("dan"), 0.0, seq=1)
    changes = p.heartbeat("gw", {"2": mem("bob")}, 1.0, seq=5)
    assert sorted((c.kind, c.user_id) for c in changes) == [("joined", "bob"), ("left", "ann")]
    assert users(p) == ["bob", "dan"]  # another gateway's connections are untouched
    assert p.heartbeat("gw", {"2": mem("bob")}, 2.0, seq=6) == []  # nothing new: no changes


def test_heartbeat_composed_before_an_open_does_not_close_it() -> None:
    p = core()
    p.open("gw", "1", mem("ann"), 0.0, seq=1)
    p.open("gw", "2", mem("bob"), 0.0, seq=7)
    # composed at seq 6: knows ann's connection is gone, has not seen bob's yet
    assert p.heartbeat("gw", {}, 1.0, seq=6) == [Change("left", ("c", "r"), "ann", "Ann", "mid")]
    assert users(p) == ["bob"]
    # a heartbeat composed at (or after) the open's seq does close it
    assert [c.user_id for c in p.heartbeat("gw", {}, 2.0, seq=7)] == ["bob"]


def test_heartbeat_without_a_seq_closes_whatever_it_does_not_list() -> None:
    p = core()
    p.open("gw", "1", mem("ann"), 0.0, seq=100)
    assert [c.user_id for c in p.heartbeat("gw", {}, 1.0)] == ["ann"]


def test_silent_gateways_expire_and_their_users_leave() -> None:
    p = core()
    p.open("gw1", "1", mem("ann"), 0.0)
    p.open("gw2", "2", mem("bob"), 0.0)
    p.open("gw2", "3", mem("ann"), 0.0)
    p.heartbeat("gw2", {"2": mem("bob")}, 10.0)  # gw2 lost ann's tab "3" and is alive
    assert p.expire(15.0, timeout=15.0) == []  # gw1 heard at 0: not longer than 15 s ago
    assert p.expire(16.0, timeout=15.0) == [Change("left", ("c", "r"), "ann", "Ann", "mid")]
    assert users(p) == ["bob"]
    assert p.expire(100.0, timeout=15.0) == [Change("left", ("c", "r"), "bob", "Bob", "mid")]
    assert p.expire(200.0, timeout=15.0) == []  # expired gateways are forgotten


def test_final_heartbeat_drops_every_connection_whatever_it_lists() -> None:
    p = core()
    p.open("gw", "1", mem("ann"), 0.0, seq=9)
    p.open("gw", "2", mem("bob"), 0.0, seq=9)
    changes = p.heartbeat("gw", {"1": mem("ann")}, 1.0, final=True, seq=1)
    assert sorted(c.user_id for c in changes) == ["ann", "bob"]
    assert all(c.kind == "left" for c in changes)
    assert p.expire(1000.0, timeout=1.0) == []  # the stopped gateway is no longer tracked


def test_after_a_restart_the_log_counts_until_settled() -> None:
    p = core()
    p.assume(("c", "r"), "ann", "Ann", "high", True)
    p.assume(("c", "r"), "bob", "Bob", "low", True)
    p.assume(("c", "r"), "gone", "Gone", "mid", True)
    p.assume(("c", "r"), "gone", "Gone", "mid", False)  # the log says gone left
    assert p.present(("c", "r")) == [Present("ann", "Ann", "high"), Present("bob", "Bob", "low")]
    # ann's gateway reports her: no second join, and her connection's payload now counts
    assert p.heartbeat("gw", {"1": mem("ann", payload="low")}, 1.0) == []
    assert p.present(("c", "r"))[0] == Present("ann", "Ann", "low")
    assert p.settle() == [Change("left", ("c", "r"), "bob", "Bob", "low")]
    assert users(p) == ["ann"]
    assert p.settle() == []
    assert p.close("gw", "1") == Change("left", ("c", "r"), "ann", "Ann", "low")


def test_settle_leaves_go_room_by_room_in_first_seen_order() -> None:
    for drop, order in ((True, ["b", "a"]), (False, ["a", "b"])):
        p = core(drop_unassumed_rooms=drop)
        p.assume(("c", "a"), "x", "X", "low", True)
        p.assume(("c", "a"), "x", "X", "low", False)  # room a empty: forgotten if drop
        p.assume(("c", "b"), "y", "Y", "low", True)
        p.assume(("c", "a"), "z", "Z", "low", True)
        assert [c.room[1] for c in p.settle()] == order


def test_last_connection_out_while_the_log_still_assumes_the_user() -> None:
    deferred = core()
    deferred.open("gw", "1", mem("ann"), 0.0)
    deferred.assume(("c", "r"), "ann", "Ann", "high", True)  # replay after the open
    assert deferred.close("gw", "1") is None  # still present per the log ...
    assert deferred.present(("c", "r")) == [Present("ann", "Ann", "high")]
    assert deferred.settle() == [Change("left", ("c", "r"), "ann", "Ann", "high")]  # ... till now

    immediate = core(defer_leave_while_assumed=False)
    immediate.open("gw", "1", mem("ann"), 0.0)
    immediate.assume(("c", "r"), "ann", "Ann", "high", True)
    assert immediate.close("gw", "1") == Change("left", ("c", "r"), "ann", "Ann", "mid")
