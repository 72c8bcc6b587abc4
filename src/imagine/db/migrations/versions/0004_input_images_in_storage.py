"""input images in storage: bytes held per task

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 10:00:00.000000

Rows written before this revision keep their inline data: URLs in `request`;
the worker still decodes those, and they hold nothing in storage (0).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("input_bytes", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.create_index(
            "ix_tasks_held_inputs",
            ["account_id"],
            unique=False,
            sqlite_where=sa.text("input_bytes > 0"),
            postgresql_where=sa.text("input_bytes > 0"),
        )


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_tasks_held_inputs")
        batch_op.drop_column("input_bytes")
