"""attempts mean model failures: a job's deferrals and interruptions (claims that spent no
attempt), its batch's deadline, and a model's pause with its run of model-level failures

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("prompt_jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("deferrals", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
        batch_op.add_column(
            sa.Column("interruptions", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
        batch_op.add_column(sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_prompt_jobs_deadline",
        "prompt_jobs",
        ["deadline_at"],
        unique=False,
        sqlite_where=sa.text("status = 'queued'"),
        postgresql_where=sa.text("status = 'queued'"),
    )
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("paused_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("paused_reason", sa.String(length=500), nullable=True))
        batch_op.add_column(
            sa.Column("failure_streak", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )


def downgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        for column in ("failure_streak", "paused_reason", "paused_at"):
            batch_op.drop_column(column)
    op.drop_index("ix_prompt_jobs_deadline", table_name="prompt_jobs")
    with op.batch_alter_table("prompt_jobs", schema=None) as batch_op:
        for column in ("deadline_at", "interruptions", "deferrals"):
            batch_op.drop_column(column)
