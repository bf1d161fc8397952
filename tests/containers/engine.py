"""What the container tests need from the machine: a Docker engine, images, a compose CLI."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = [
    "APP_IMAGE",
    "LB_IMAGE",
    "NATS_IMAGE",
    "ROOT",
    "compose_cli",
    "docker_available",
    "require_docker",
    "require_images",
]

ROOT = Path(__file__).resolve().parents[2]
APP_IMAGE = os.environ.get("AG_IMAGE", "atomic-guide:latest")
NATS_IMAGE = os.environ.get("AG_NATS_IMAGE", "nats:2.15")
LB_IMAGE = os.environ.get("AG_LB_IMAGE", "atomic-guide-lb:latest")

# testcontainers reads these when it is imported. No reaper (its image cannot be pulled here; we
# stop what we start), and published ports are reached on loopback, not the bridge gateway.
for _name, _value in {
    "TESTCONTAINERS_RYUK_DISABLED": "true",
    "TESTCONTAINERS_CONNECTION_MODE": "docker_host",
    "TESTCONTAINERS_HOST_OVERRIDE": "127.0.0.1",
}.items():
    os.environ.setdefault(_name, _value)


def _run(*cmd: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


@functools.cache
def docker_available() -> str | None:
    """None when an engine answers, else the reason it does not."""
    if shutil.which("docker") is None:
        return "no docker CLI on PATH"
    try:
        info = _run("docker", "info", "--format", "{{.ServerVersion}}")
    except subprocess.TimeoutExpired:
        return "`docker info` timed out"
    if info.returncode != 0:
        return "no Docker engine answers `docker info`: " + info.stderr.strip()[:200]
    return None


def require_docker() -> None:
    reason = docker_available()
    if reason:
        pytest.skip(reason)


def require_images(*images: str) -> None:
    require_docker()
    missing = [i for i in images if _run("docker", "image", "inspect", i).returncode != 0]
    if missing:
        pytest.skip(f"images {missing} missing: run ops/images/prepare.sh")


@functools.cache
def compose_cli() -> tuple[str, ...]:
    """AG_COMPOSE if set (e.g. "docker compose"), else compose v1, else the v2 plugin."""
    if os.environ.get("AG_COMPOSE"):
        return tuple(os.environ["AG_COMPOSE"].split())
    if shutil.which("docker-compose"):
        return ("docker-compose",)
    if _run("docker", "compose", "version").returncode == 0:
        return ("docker", "compose")
    pytest.skip("neither docker-compose (v1) nor the `docker compose` plugin is installed")
