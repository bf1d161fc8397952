"""Which contexts get live metrics: those a gateway says it has dashboards in, or just asked."""

from __future__ import annotations

from services.analytics.watch import WatchBook


def test_gateways_and_requests_say_what_is_watched_until_they_go_quiet() -> None:
    book = WatchBook(beat_s=1.0)  # silent for 3 s: forgotten
    assert book.watched(0.0) == set()
    book.heartbeat("gw1", ["c1", "c2"], now=0.0, final=False)
    book.heartbeat("gw2", ["c2", "c3"], now=0.0, final=False)
    book.asked(["c4"], now=0.5)  # a dashboard subscribed before its gateway's next beat
    assert book.watched(1.0) == {"c1", "c2", "c3", "c4"}
    book.heartbeat("gw1", ["c2"], now=2.0, final=False)  # c1's dashboard closed
    assert book.watched(2.5) == {"c2", "c3", "c4"}
    assert book.watched(3.2) == {"c2", "c4"}  # gw2 silent for 3 beats
    assert book.watched(3.6) == {"c2"}  # c4's request lapsed
    book.heartbeat("gw1", [], now=3.7, final=True)  # gw1 stops
    assert book.watched(3.8) == set()
