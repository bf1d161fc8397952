"""The hold-until-reply gate every endpoint uses (sans-I/O)."""

from __future__ import annotations

from services.gateway.holdgate import HoldGate


def gate(limit: int = 10) -> tuple[HoldGate, list[str], list[int]]:
    out: list[str] = []
    closed: list[int] = []
    return (
        HoldGate(
            lambda text, droppable, lazy: out.append(text), lambda: closed.append(1013), limit
        ),
        out,
        closed,
    )


def test_frames_pass_through_when_nothing_is_held() -> None:
    g, out, _ = gate()
    g.offer("e1", 1)
    g.offer("cursor", None, droppable=True)
    assert out == ["e1", "cursor"] and g.floor == 1


def test_a_reply_holds_frames_and_releases_only_those_after_its_position() -> None:
    g, out, _ = gate()
    g.hold()
    for v in (3, 4, 5):
        g.offer(f"e{v}", v)
    g.offer("cursor", None, droppable=True)
    assert out == []
    g.release(4)  # the snapshot/join reply showed version 4
    assert out == ["e5", "cursor"]
    g.offer("e4-late", 4)  # at or below what the client has: dropped
    g.offer("e6", 6)
    assert out[-1] == "e6" and out.count("e4-late") == 0


def test_holds_nest_and_a_closed_gate_delivers_nothing() -> None:
    g, out, _ = gate()
    g.hold()
    g.hold()
    g.offer("e1", 1)
    g.release()
    assert out == []
    g.closed = True
    g.release()
    assert out == []


def test_a_request_that_came_to_nothing_discards_what_was_kept_for_it() -> None:
    g, out, _ = gate()
    g.hold()
    g.offer("e1", 1)
    g.release(discard=True)
    assert out == []
    g.offer("e2", 2)
    assert out == ["e2"]


def test_held_overflow_drops_droppable_frames_and_closes_for_the_rest() -> None:
    g, _, closed = gate(limit=1)
    g.hold()
    g.offer("e1", 1)
    g.offer("cursor", None, droppable=True)
    assert closed == []
    g.offer("e2", 2)
    assert closed == [1013]


def test_whether_a_frame_may_wait_survives_being_held() -> None:
    out: list[tuple[str, bool, bool]] = []
    g = HoldGate(lambda text, droppable, lazy: out.append((text, droppable, lazy)), list, 10)
    g.hold()
    g.offer("joined", None, lazy=True)
    g.offer("typing", None, droppable=True, lazy=True)
    g.offer("m1", 1)
    g.release()
    g.offer("left", None, lazy=True)
    assert out == [
        ("joined", False, True),
        ("typing", True, True),
        ("m1", False, False),
        ("left", False, True),
    ]
