"""worker presence and trace context

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08 04:00:00.000000

`worker_processes` holds one row per process that runs workers, refreshed by
its heartbeat, so the metrics of any API process can count live workers per
engine. `tasks.traceparent` keeps the W3C trace context of the submitting
request when tracing is on, so the worker's span joins that trace.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "worker_processes",
        sa.Column("id", sa.String(length=80), nullable=False),
        sa.Column("engines", sa.JSON(), nullable=False),
        sa.Column("slots", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_worker_processes_seen_at", "worker_processes", ["seen_at"])
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("traceparent", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("traceparent")
    op.drop_index("ix_worker_processes_seen_at", table_name="worker_processes")
    op.drop_table("worker_processes")
