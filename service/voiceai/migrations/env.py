"""Alembic's environment: migrates the connection `voiceai.store` hands over (or, for the
`alembic` command run from this folder, the database named by `-x url=...`)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from voiceai.store import Base


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters by copying a table
    )
    with context.begin_transaction():
        context.run_migrations()


given = context.config.attributes.get("connection")
if given is not None:
    _migrate(given)
else:
    with create_engine(context.get_x_argument(as_dictionary=True)["url"]).begin() as connection:
        _migrate(connection)
