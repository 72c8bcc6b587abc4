"""moderation refusals

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08 09:00:00.000000

`moderation_refusals` records each task the content policy refused: the
stage, the check, what it looked at, the rule and score that decided it,
and an operator's review (false positive or not).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "moderation_refusals",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("task_id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("is_test", sa.Boolean(), nullable=False),
        sa.Column("mode", sa.String(length=20), nullable=False),
        sa.Column("engine", sa.String(length=40), nullable=False),
        sa.Column("stage", sa.String(length=10), nullable=False),
        sa.Column("check_name", sa.String(length=30), nullable=False),
        sa.Column("subject", sa.String(length=100), nullable=False),
        sa.Column("rule", sa.Text(), nullable=False),
        sa.Column("score", sa.Double(), nullable=True),
        sa.Column("false_positive", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reviewed_by", sa.String(length=40), nullable=True),
        sa.Column("review_note", sa.String(length=500), server_default="", nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"]),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_moderation_refusals_listing", "moderation_refusals", ["created_at", "id"])
    op.create_index("ix_moderation_refusals_task_id", "moderation_refusals", ["task_id"])


def downgrade() -> None:
    op.drop_index("ix_moderation_refusals_task_id", table_name="moderation_refusals")
    op.drop_index("ix_moderation_refusals_listing", table_name="moderation_refusals")
    op.drop_table("moderation_refusals")
