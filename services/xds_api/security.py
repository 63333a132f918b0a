"""Bearer tokens. The bootstrap admin token: VNA_ADMIN_TOKEN, or generated once per data dir."""

from __future__ import annotations

import hashlib
import os
import secrets

from vna.settings import Settings


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def ensure_admin_token(settings: Settings) -> tuple[str, bool]:
    """The admin token and whether it was generated just now (then it is shown once)."""
    if settings.admin_token:
        return settings.admin_token, False
    path = settings.data_dir / "admin-token"
    if path.exists():
        return path.read_text().strip(), False
    token = secrets.token_urlsafe(32)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True
