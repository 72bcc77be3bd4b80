"""model call contract: per-model generation settings, the custom-host opt-in, what each attempt
spent, and where a response's cost came from

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("max_tokens", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("temperature", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("seed", sa.BigInteger(), nullable=True))
        batch_op.add_column(
            sa.Column("custom_host", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.create_check_constraint(
            "ck_models_max_tokens", "max_tokens IS NULL OR max_tokens BETWEEN 1 AND 1000000"
        )
        batch_op.create_check_constraint(
            "ck_models_temperature", "temperature IS NULL OR temperature BETWEEN 0 AND 2"
        )
    with op.batch_alter_table("job_attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("calls", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("prompt_tokens", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("completion_tokens", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("cost", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("cost_source", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("raw_body", sa.Text(), nullable=True))
    with op.batch_alter_table("responses", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cost_source", sa.String(length=20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("responses", schema=None) as batch_op:
        batch_op.drop_column("cost_source")
    with op.batch_alter_table("job_attempts", schema=None) as batch_op:
        for column in ("raw_body", "cost_source", "cost", "completion_tokens", "prompt_tokens"):
            batch_op.drop_column(column)
        batch_op.drop_column("calls")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_constraint("ck_models_temperature", type_="check")
        batch_op.drop_constraint("ck_models_max_tokens", type_="check")
        for column in ("custom_host", "seed", "temperature", "max_tokens"):
            batch_op.drop_column(column)
