"""Which contexts someone is watching (sans-I/O): live metrics are computed for these only.

An instructor's dashboard is what reads live metrics, and most contexts have none open. Each
gateway lists the contexts it has analytics sockets in with every heartbeat (``AnalyticsWatch``);
a ``subscribe`` (the gateway asks for the current values first) counts at once, before the next
heartbeat says so. A gateway silent for three beats, or one that said it stops, watches nothing.
Every context stays queryable (``current``, ad-hoc SQL): only the pushing is skipped.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["WatchBook"]


class WatchBook:
    def __init__(self, beat_s: float) -> None:
        self.ttl = 3 * beat_s
        self._gateways: dict[str, tuple[frozenset[str], float]] = {}
        self._asked: dict[str, float] = {}  # context -> until (from a `current` request)

    def heartbeat(self, gateway_id: str, contexts: Iterable[str], now: float, final: bool) -> None:
        if final:
            self._gateways.pop(gateway_id, None)
        else:
            self._gateways[gateway_id] = (frozenset(contexts), now + self.ttl)

    def asked(self, contexts: Iterable[str], now: float) -> None:
        for ctx in contexts:
            self._asked[ctx] = now + self.ttl

    def watched(self, now: float) -> set[str]:
        self._gateways = {g: v for g, v in self._gateways.items() if v[1] > now}
        self._asked = {c: t for c, t in self._asked.items() if t > now}
        out = set(self._asked)
        for contexts, _ in self._gateways.values():
            out |= contexts
        return out
