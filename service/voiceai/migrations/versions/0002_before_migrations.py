"""What the releases before migrations added.

Hang-up cause, transfer, errors, engines and recording columns, and indexes for listing calls
by status and start. Those releases added missing columns themselves, as nullable, at each
start, and made the indexes only in new databases, so a database they made may have any of
these already: each is added only if missing, and the columns end as a new database has them
(lists and maps not null).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

COLUMNS: dict[str, sa.types.TypeEngine] = {
    "hangup_cause": sa.String(64),
    "transferred_to": sa.String(64),
    "errors": sa.JSON(),
    "engines": sa.JSON(),
    "recording": sa.String(512),
}
# JSON columns a record always has: what rows written before they existed get.
FILLED = {"errors": [], "engines": {}}
INDEXES = {"ix_calls_status": "status", "ix_calls_started_at": "started_at"}


def upgrade() -> None:
    schema = sa.inspect(op.get_bind())
    have = {c["name"]: c for c in schema.get_columns("calls")}
    for name, kind in COLUMNS.items():
        if name not in have:
            op.add_column("calls", sa.Column(name, kind, nullable=True))
    calls = sa.table("calls", *(sa.column(name, sa.JSON) for name in FILLED))
    for name, empty in FILLED.items():
        op.execute(calls.update().where(calls.c[name].is_(None)).values({name: empty}))
    nullable = [n for n in FILLED if n not in have or have[n]["nullable"]]
    if nullable:
        with op.batch_alter_table("calls") as batch:
            for name in nullable:
                batch.alter_column(name, existing_type=sa.JSON, nullable=False)
    indexed = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("calls")}
    for index, column in INDEXES.items():
        if index not in indexed:
            op.create_index(index, "calls", [column])


def downgrade() -> None:
    for index in INDEXES:
        op.drop_index(index, "calls")
    with op.batch_alter_table("calls") as batch:
        for name in COLUMNS:
            batch.drop_column(name)
