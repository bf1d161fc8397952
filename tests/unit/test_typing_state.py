from __future__ import annotations

from services.gateway.typing_state import TypingTracker


def test_typing_lapses_after_ttl_without_renewal() -> None:
    t = TypingTracker(6)
    assert t.set("c", "u", "U", True, now=0)
    assert t.set("c", "u", "U", True, now=4)  # renewal is forwarded
    assert t.lapsed(9.9) == []
    assert t.lapsed(10) == [("c", "u", "U")]
    assert t.next_deadline() is None


def test_stop_and_explicit_false_only_announce_when_typing() -> None:
    t = TypingTracker(6)
    assert not t.set("c", "u", "U", False, now=0)
    t.set("c", "u", "U", True, now=0)
    assert t.stop("c", "u") and not t.stop("c", "u")
