"""Settings the CLI derives from the data dir: the dev secret and the embedded NATS URL."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from ops.natsd import recorded_url
from shared.config import Settings, load_settings

__all__ = ["resolve_settings", "ensure_secret"]


def resolve_settings(**overrides: Any) -> Settings:
    """Environment and flags, then what `up` left in the data dir (secret, NATS URL)."""
    settings = load_settings(**overrides)
    extra: dict[str, Any] = {}
    secret_file = settings.data_dir / "jwt_secret"
    if settings.jwt_secret is None and secret_file.exists():
        extra["jwt_secret"] = secret_file.read_text().strip()
    if settings.nats_url is None:
        extra["nats_url"] = recorded_url(settings.data_dir)
    return settings.replace(**extra)


def ensure_secret(data_dir: Path) -> tuple[str, bool]:
    """The dev secret in the data dir, generated (mode 600) if missing. Returns (secret, new)."""
    path = data_dir / "jwt_secret"
    if path.exists():
        return path.read_text().strip(), False
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    return secret, True
