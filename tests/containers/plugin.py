"""pytest plugin: run the integration suite's NATS in a container instead of the embedded binary.

Load it with ``-p tests.containers.plugin`` (pyproject ``addopts``), then choose the server with
``--nats=container`` or ``AG_TEST_NATS=container`` (default: ``embedded``). The integration
conftest asks for ``nats_container`` when :func:`nats_mode` says so. The container runs the same
image and server configuration as compose.yaml, publishes on a random loopback port, and is
removed after each test, so every test gets an empty JetStream store as with the embedded server.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.containers.engine import NATS_IMAGE, ROOT, require_images

__all__ = ["ContainerNats", "nats_container", "nats_mode"]

MODES = ("embedded", "container")
_CONF = ROOT / "ops" / "images" / "nats" / "server.conf"


def pytest_addoption(parser: pytest.Parser) -> None:
    import os

    parser.getgroup("atomic-guide").addoption(
        "--nats",
        choices=MODES,
        default=os.environ.get("AG_TEST_NATS", "embedded"),
        help="where integration tests get NATS: the embedded binary (default) or a container "
        f"of {NATS_IMAGE} (also AG_TEST_NATS=container)",
    )


def nats_mode(config: pytest.Config) -> str:
    """``embedded`` or ``container``; ``embedded`` when this plugin is not loaded."""
    return str(config.getoption("nats", default="embedded"))


@dataclass
class ContainerNats:
    """Quacks like ``ops.natsd.NatsServer`` where tests use it: url, monitor_url, stop()."""

    container: Any
    url: str
    monitor_url: str

    def stop(self, timeout: float = 10.0) -> None:
        self.container.get_wrapped_container().stop(timeout=int(timeout))

    def start(self) -> None:
        """Start it again (same store, same host ports); for restart tests."""
        self.container.get_wrapped_container().start()


@pytest.fixture
def nats_container() -> Iterator[ContainerNats]:
    require_images(NATS_IMAGE)
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    container = (
        DockerContainer(NATS_IMAGE)
        .with_command(["--config", "/etc/nats/server.conf"])
        .with_volume_mapping(str(_CONF), "/etc/nats/server.conf", "ro")
        .waiting_for(LogMessageWaitStrategy("Server is ready").with_startup_timeout(30))
    )
    # Random host ports on loopback only, not on every interface: docker-py's ("ip",) binding,
    # which with_bind_ports cannot express.
    ports: dict[str, Any] = container.ports
    ports.update({"4222": ("127.0.0.1",), "8222": ("127.0.0.1",)})
    container.start()
    try:
        host = container.get_container_host_ip()
        yield ContainerNats(
            container,
            url=f"nats://{host}:{container.get_exposed_port(4222)}",
            monitor_url=f"http://{host}:{container.get_exposed_port(8222)}",
        )
    finally:
        container.stop()
