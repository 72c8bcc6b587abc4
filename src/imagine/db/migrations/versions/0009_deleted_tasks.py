"""deleted tasks

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08 10:00:00.000000

`tasks.deleted_at` marks a task its owner deleted (the OpenAI-compatible
`DELETE /openai/v1/videos/{id}`): its files are gone and no face shows it
again, while its ledger rows stay, as every balance change does.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("deleted_at")
