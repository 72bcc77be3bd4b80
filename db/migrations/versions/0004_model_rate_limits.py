"""per-model rate limits shared by every runner: requests and tokens per minute, the pacing
state all runners reserve their calls from, the limits the provider's headers stated, and the
concurrency adapted to its 429s (AIMD); daily budgets and each model's spend per UTC day

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rpm", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("tpm", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("daily_budget_usd", sa.Float(), nullable=True))
        batch_op.create_check_constraint("ck_models_rpm", "rpm IS NULL OR rpm >= 1")
        batch_op.create_check_constraint("ck_models_tpm", "tpm IS NULL OR tpm >= 1")
        batch_op.create_check_constraint(
            "ck_models_daily_budget_usd", "daily_budget_usd IS NULL OR daily_budget_usd > 0"
        )
    op.create_table(
        "model_pacing",
        sa.Column(
            "model_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.ForeignKey("models.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("next_request_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_tokens_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("learned_rpm", sa.Integer(), nullable=True),
        sa.Column("learned_tpm", sa.BigInteger(), nullable=True),
        sa.Column("learned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("remaining_requests", sa.Integer(), nullable=True),
        sa.Column("remaining_tokens", sa.BigInteger(), nullable=True),
        sa.Column("concurrency", sa.Float(), nullable=True),
        sa.Column("decreased_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )

    op.create_table(
        "model_spend",
        sa.Column(
            "model_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.ForeignKey("models.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("day", sa.String(length=10), primary_key=True),
        sa.Column("usd", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("model_spend")
    op.drop_table("model_pacing")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_constraint("ck_models_daily_budget_usd", type_="check")
        batch_op.drop_constraint("ck_models_tpm", type_="check")
        batch_op.drop_column("daily_budget_usd")
        batch_op.drop_constraint("ck_models_rpm", type_="check")
        batch_op.drop_column("tpm")
        batch_op.drop_column("rpm")
