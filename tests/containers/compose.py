"""A compose project driven through the CLI (v1 `docker-compose` or v2 `docker compose`).

testcontainers' DockerCompose speaks only v2; this machine's distribution ships v1, and the two
take the same arguments for everything here.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Mapping

from tests.containers.engine import ROOT, compose_cli

__all__ = ["ComposeProject"]


class ComposeProject:
    """One uniquely named project: its containers, network and volumes are its own."""

    def __init__(self, files: list[str], env: Mapping[str, str], prefix: str = "agtest") -> None:
        self.name = f"{prefix}{uuid.uuid4().hex[:8]}"
        self.files = files
        # Only what compose needs: settings for the stack come from `env`, not from the caller's
        # shell (an AG_NATS_URL exported for the host CLI must not leak into the containers).
        keep = ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT")
        self.env = {k: v for k, v in os.environ.items() if k in keep} | dict(env)

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        cmd = [*compose_cli(), "--project-name", self.name]
        for f in self.files:
            cmd += ["--file", f]
        proc = subprocess.run(
            [*cmd, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc.stdout

    def up(self, *services: str) -> None:
        self.run("up", "--detach", *services)

    def down(self) -> None:
        # Short stop timeout: the stack is thrown away, volumes and all.
        self.run("down", "--volumes", "--remove-orphans", "--timeout", "5", check=False)

    def logs(self, *services: str, tail: int = 60) -> str:
        return self.run("logs", "--no-color", "--tail", str(tail), *services, check=False)

    def container(self, service: str) -> str:
        cid = self.run("ps", "-q", service).strip()
        if not cid:
            raise LookupError(f"no container for {service}")
        return cid.splitlines()[0]

    def inspect(self, service: str) -> dict[str, object]:
        out = subprocess.run(
            ["docker", "inspect", self.container(service)],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        result: dict[str, object] = json.loads(out)[0]
        return result

    def health(self, service: str) -> str:
        state = self.inspect(service)["State"]
        assert isinstance(state, dict)
        health = state.get("Health") or {}
        return str(health.get("Status", "none"))
