"""Alembic environment: the URL comes from `storage.migrate`, never from an ini file."""

from alembic import context
from sqlalchemy import create_engine, text

from storage.index.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url") or ""


def run_migrations_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata,
                          render_as_batch=True)
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Nodes sharing one database may start together: one migrates, the
                # others wait and then find nothing left to do.
                connection.execute(text("SELECT pg_advisory_xact_lock(7462837)"))
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
