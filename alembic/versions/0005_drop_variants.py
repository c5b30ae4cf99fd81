"""Drop the `variants` table: written on every save, never read (the config holds the variants).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 14:10:00
"""

import sqlalchemy as sa

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("variants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_variants_experiment_id"))
    op.drop_table("variants")


def downgrade() -> None:
    # Recreated empty: the previous code rewrites an experiment's rows on its next save.
    op.create_table(
        "variants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("is_control", sa.Boolean(), nullable=False),
        sa.Column("strategy_kind", sa.String(length=64), nullable=True),
        sa.Column("strategy_params", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("experiment_id", "key", name="uq_variants_experiment_key"),
    )
    with op.batch_alter_table("variants", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_variants_experiment_id"), ["experiment_id"], unique=False
        )
