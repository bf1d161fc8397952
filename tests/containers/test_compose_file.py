"""compose.yaml runs what `atomic-guide up` runs, safely: a plain unit test, no Docker needed."""

from __future__ import annotations

from typing import Any

import pytest
import yaml  # a dependency of litestar, so always installed with the project

from ops.supervisor import SERVICES
from tests.containers.engine import ROOT


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / name).read_text())
    return data


COMPOSE = load("compose.yaml")
SCALE = load("compose.scale.yaml")
APP_SERVICES = [
    name
    for name, service in COMPOSE["services"].items()
    if "services." in " ".join(service.get("command", []))
]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_supervised_service_is_in_compose_with_its_module(name: str) -> None:
    assert name in COMPOSE["services"], f"{name} is in ops/supervisor.py, not in compose.yaml"
    assert COMPOSE["services"][name]["command"] == ["python", "-m", SERVICES[name]]


@pytest.mark.parametrize("name", APP_SERVICES)
def test_services_restart_check_health_and_wait_for_provisioned_streams(name: str) -> None:
    service = COMPOSE["services"][name]
    assert service["restart"] in ("unless-stopped", "always", "on-failure")
    assert service["healthcheck"]["test"][:2] == ["CMD", "python"]
    assert service["depends_on"]["provision"]["condition"] == "service_completed_successfully"
    assert service["environment"]["AG_NATS_URL"].startswith("nats://nats:")
    assert "data:/data" in service["volumes"] and service["environment"]["AG_DATA_DIR"] == "/data"


def test_the_gateway_listens_on_all_container_interfaces_but_publishes_on_loopback() -> None:
    gateway = COMPOSE["services"]["gateway"]
    assert gateway["environment"]["AG_GATEWAY_HOST"] == "0.0.0.0"
    for doc in (COMPOSE, SCALE):
        for name, service in doc["services"].items():
            for mapping in service.get("ports", []):
                assert str(mapping).startswith("127.0.0.1:"), f"{name} publishes {mapping}"


def test_no_jwt_secret_is_committed() -> None:
    for doc in (COMPOSE, SCALE):
        for service in doc["services"].values():
            env = service.get("environment") or {}
            if "AG_JWT_SECRET" in env:
                assert env["AG_JWT_SECRET"].startswith("${AG_JWT_SECRET:?")
    assert not (ROOT / ".env").exists() or ".env" in (ROOT / ".gitignore").read_text()


def test_the_scale_out_file_clusters_nats_and_replicates_streams_three_ways() -> None:
    services = SCALE["services"]
    assert services["provision"]["environment"]["AG_STREAM_REPLICAS"] == "3"
    nodes = [n for n in services if n.startswith("nats")]
    assert sorted(nodes) == ["nats", "nats-2", "nats-3"]
    for node in nodes:
        assert "--routes" in services[node]["command"]
    lb = (ROOT / "ops" / "lb" / "haproxy.cfg").read_text()
    gateways = [n for n in {**COMPOSE["services"], **services} if n.startswith("gateway")]
    for name in gateways:
        assert f" {name}:8000" in lb, f"{name} is not behind the load balancer"


def test_the_scale_out_file_runs_three_chat_and_two_collaboration_workers_with_own_ids() -> None:
    base, scale = COMPOSE["services"], SCALE["services"]
    merged = {}
    for name in {*base, *scale}:
        b, o = base.get(name, {}), scale.get(name, {})
        env = {**(b.get("environment") or {}), **(o.get("environment") or {})}
        merged[name] = {**b, **o, "environment": env}

    def workers(module: str) -> list[str]:
        return sorted(n for n, s in merged.items() if s.get("command") == ["python", "-m", module])

    chat, collab = workers("services.chat"), workers("services.collaboration")
    assert len(chat) == 3 and len(collab) == 2
    ids = [merged[n]["environment"]["AG_WORKER_ID"] for n in chat + collab]
    assert len(set(ids)) == len(ids), ids
    for name in chat + collab:
        assert merged[name]["environment"]["AG_NATS_URL"].count("nats://") == 3, name
