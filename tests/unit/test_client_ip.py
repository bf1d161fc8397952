from __future__ import annotations

from typing import Any

from services.gateway.gate import client_ip, parse_proxies


def scope(peer: str, xff: str | None = None) -> dict:
    headers = [(b"x-forwarded-for", xff.encode())] if xff else []
    return {"client": (peer, 1234), "headers": headers}


def test_peer_is_the_client_without_trusted_proxies() -> None:
    assert client_ip(scope("203.0.113.9", "1.2.3.4"), ()) == "203.0.113.9"


def test_forwarded_for_is_believed_only_from_a_trusted_proxy() -> None:
    proxies = parse_proxies(["10.0.0.5"])
    assert client_ip(scope("10.0.0.5", "198.51.100.7"), proxies) == "198.51.100.7"
    assert client_ip(scope("10.0.0.6", "198.51.100.7"), proxies) == "10.0.0.6"


def test_rightmost_untrusted_hop_wins_and_cidr_ranges_are_trusted() -> None:
    proxies = parse_proxies(["172.16.0.0/12"])
    # the client may forge the left part; the right-most hop not ours is the real client
    got = client_ip(scope("172.18.0.3", "6.6.6.6, 198.51.100.7, 172.18.0.2"), proxies)
    assert got == "198.51.100.7"
    assert client_ip(scope("172.18.0.3", "garbage"), proxies) == "172.18.0.3"


async def test_after_a_socket_the_gate_takes_the_outlet_out_of_its_scope() -> None:
    """The outlet is the server's protocol, which keeps the scope: left in the scope, the
    closed socket's protocol would wait for a full collection."""
    from services.gateway.gate import ConnectionGate
    from services.gateway.outlet import EXTENSION
    from shared.config import load_settings

    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message["type"])

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert EXTENSION in scope["extensions"]  # there while the app runs
        await receive()
        await send({"type": "websocket.accept"})

    gate = ConnectionGate(app, load_settings({"AG_JWT_SECRET": "x" * 64}))
    scope: dict[str, Any] = {
        "type": "websocket",
        "client": ("127.0.0.1", 5),
        "headers": [],
        "extensions": {EXTENSION: object()},
    }
    await gate(scope, receive, send)
    assert sent == ["websocket.accept"]
    assert EXTENSION not in scope["extensions"]
