"""`up` gives each service a metrics port of its own, never the gateway's."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ops import supervisor


def test_metrics_ports_skip_the_gateways_port_and_each_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The OS may hand out a port that is free now but about to be the gateway's, or the same
    # free port twice: the supervisor must ask again.
    offered: Iterator[int] = iter([8123, 9001, 9001, 8123, 9002, 9003, 9004, 9005])
    monkeypatch.setattr(supervisor, "_free_port", lambda host: next(offered))
    sup = supervisor.Supervisor(
        {"AG_GATEWAY_PORT": "8123"}, names=["chat", "analytics", "collaboration", "gateway"]
    )
    ports = sup.metrics_ports
    assert set(ports) == {"chat", "analytics", "collaboration"}
    assert 8123 not in ports.values()
    assert len(set(ports.values())) == 3
