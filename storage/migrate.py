"""Schema migrations of the index (Alembic), run by `vna db upgrade` and at `vna up`."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest revision under migrations/versions (tests/test_migrations.py keeps it so):
# an index already there needs no Alembic, which takes half a second to import.
HEAD = "0007"


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def ensure_current(url: str, *, lock_dir: Path | None = None) -> None:
    """Bring the index to the newest revision unless it is there already (what every
    `vna` command does as it starts)."""
    if current(url) != HEAD:
        upgrade(url, lock_dir=lock_dir)


def current(url: str) -> str | None:
    """The index's revision, read without Alembic; None for an index without a schema."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError:
        return None
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head", *, lock_dir: Path | None = None) -> None:
    """Bring the index to `revision`; concurrent callers on one data dir take turns."""
    from alembic import command

    cfg = alembic_config(url)
    if lock_dir is None:
        command.upgrade(cfg, revision)
        return
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / ".migrate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        command.upgrade(cfg, revision)

