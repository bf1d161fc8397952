"""Container tests: each is marked ``containers`` and skips when no Docker engine answers."""

from __future__ import annotations

from tests.containers.plugin import nats_container  # noqa: F401 - usable without `-p` too
