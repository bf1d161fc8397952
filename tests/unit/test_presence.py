from __future__ import annotations

from services.chat.presence import Change, Presence
from shared.schemas.commands import Connection


def conn(cid: str, user: str, ctx: str = "c") -> Connection:
    return Connection(ctx, cid, user, user.title())


def test_first_connection_joins_and_last_leaves_across_gateways() -> None:
    p = Presence()
    assert p.open("gw1", conn("1", "bob"), 0) == Change("joined", "c", "bob", "Bob")
    assert p.open("gw2", conn("2", "bob"), 0) is None  # a second tab, another gateway
    assert p.close("gw1", "1") is None
    assert p.users("c") == [{"userId": "bob", "username": "Bob"}]
    assert p.close("gw2", "2") == Change("left", "c", "bob", "Bob")
    assert p.users("c") == []


def test_closing_an_unknown_connection_is_harmless() -> None:
    p = Presence()
    assert p.close("gw", "nope") is None


def test_heartbeat_reconciles_a_gateways_connections() -> None:
    p = Presence()
    p.open("gw", conn("1", "a"), 0, seq=1)
    changes = p.heartbeat("gw", [conn("2", "b")], 1, seq=5)
    assert Change("left", "c", "a", "A") in changes and Change("joined", "c", "b", "B") in changes


def test_heartbeat_composed_before_an_open_does_not_close_it() -> None:
    p = Presence()
    p.open("gw", conn("1", "a"), 0, seq=7)
    assert p.heartbeat("gw", [], 1, seq=6) == []
    assert p.users("c") == [{"userId": "a", "username": "A"}]


def test_silent_gateway_expires_and_its_users_leave() -> None:
    p = Presence()
    p.open("gw1", conn("1", "a"), 0)
    p.open("gw2", conn("2", "b"), 0)
    p.heartbeat("gw2", [conn("2", "b")], 10)
    assert p.expire(16, timeout=15) == [Change("left", "c", "a", "A")]
    assert [u["userId"] for u in p.users("c")] == ["b"]


def test_final_heartbeat_drops_every_socket_of_a_stopping_gateway() -> None:
    p = Presence()
    p.open("gw", conn("1", "a"), 0)
    assert p.heartbeat("gw", [], 1, final=True) == [Change("left", "c", "a", "A")]


def test_after_restart_log_presence_holds_until_settled_then_absent_users_leave() -> None:
    p = Presence()
    p.assume("c", "a", "A", True)
    p.assume("c", "b", "B", True)
    p.assume("c", "z", "Z", True)
    p.assume("c", "z", "Z", False)  # the log says z left
    assert p.open("gw", conn("1", "a"), 0) is None  # already present: no second join
    assert [u["userId"] for u in p.users("c")] == ["a", "b"]
    assert p.settle() == [Change("left", "c", "b", "B")]
    assert [u["userId"] for u in p.users("c")] == ["a"]


def test_the_logged_picture_diffs_against_who_is_there_joins_then_leaves() -> None:
    from shared.presence import ConnectionChange, ConnectionPresence, LoggedPresence
    from shared.schemas.commands import Connection

    logged = LoggedPresence[str, None]()
    logged.apply("r", "u1", "Ann", None, True)
    logged.apply("r", "u2", "Bob", None, True)
    logged.apply("r", "u2", "Bob", None, False)
    logged.apply("r", "u3", "Cy", None, True)
    live = ConnectionPresence()
    for user, name in (("u1", "Ann"), ("u4", "Dee")):
        live.open("gw", Connection("r", f"c-{user}", user, name), 1.0)
    assert live.reconcile(logged, "r") == [
        ConnectionChange("joined", "r", "u4", "Dee"),
        ConnectionChange("left", "r", "u3", "Cy"),
    ]
    logged.apply("r", "u4", "Dee", None, True)
    logged.apply("r", "u3", "Cy", None, False)
    assert live.reconcile(logged, "r") == []
    logged.apply("r", "u1", "Ann", None, False)
    logged.apply("r", "u4", "Dee", None, False)
    assert logged.rooms() == []
