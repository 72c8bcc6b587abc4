"""fair claim order

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 10:00:00.000000

Tasks are claimed by (is_test, fair_at, id) instead of available_at (see
imagine.queue.fairness). Unfinished tasks keep their order: their fair_at is
their available_at; finished ones are never ordered again and keep 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# available_at in epoch seconds, in each dialect's own terms.
_EPOCH_SECONDS = {
    "sqlite": "(julianday(available_at) - 2440587.5) * 86400.0",
    "postgresql": "EXTRACT(EPOCH FROM available_at)",
}


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fair_at", sa.Double(), server_default="0", nullable=False))
        batch_op.add_column(
            sa.Column("test_fair_at", sa.Double(), server_default="0", nullable=False)
        )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fair_at", sa.Double(), server_default="0", nullable=False))
        batch_op.drop_index("ix_tasks_queue")
        batch_op.create_index(
            "ix_tasks_queue", ["status", "is_test", "fair_at", "id"], unique=False
        )
    epoch_seconds = _EPOCH_SECONDS[op.get_bind().dialect.name]
    op.execute(
        f"UPDATE tasks SET fair_at = {epoch_seconds} WHERE status IN ('pending', 'processing')"
    )


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_tasks_queue")
        batch_op.create_index("ix_tasks_queue", ["status", "available_at"], unique=False)
        batch_op.drop_column("fair_at")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("test_fair_at")
        batch_op.drop_column("fair_at")
