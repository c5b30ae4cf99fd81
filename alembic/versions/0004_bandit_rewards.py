"""Bandit rewards exactly once: each sticky unit's and each per-request exposure's reward.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 00:20:00
"""

import sqlalchemy as sa

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bandit_assignments", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("reward", sa.Float(), nullable=False, server_default=sa.text("0"))
        )
    op.create_table(
        "bandit_exposures",
        sa.Column("exposure_id", sa.BigInteger(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("context", sa.String(length=64), nullable=False),
        sa.Column("arm", sa.String(length=128), nullable=False),
        sa.Column("reward", sa.Float(), nullable=False, server_default=sa.text("0")),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("exposure_id"),
    )


def downgrade() -> None:
    op.drop_table("bandit_exposures")
    with op.batch_alter_table("bandit_assignments", schema=None) as batch_op:
        batch_op.drop_column("reward")
