"""workers.threads becomes workers.concurrency: a worker process's calls in flight are tasks on
one event loop now, not threads (issue 11)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.alter_column("threads", new_column_name="concurrency")


def downgrade() -> None:
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.alter_column("concurrency", new_column_name="threads")
