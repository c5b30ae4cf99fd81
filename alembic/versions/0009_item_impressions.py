"""Impressions per (experiment, variant, source, item), kept as slates are stored.

Backfilled from the stored impressions (every source ``""``: none was recorded before).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 13:00:00
"""

import sqlalchemy as sa

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "item_impressions",
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("variant", sa.String(length=128), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("item_id", sa.String(length=128), nullable=False),
        sa.Column("impressions", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("experiment_id", "variant", "source", "item_id"),
        sqlite_with_rowid=False,
    )
    op.execute(
        "INSERT INTO item_impressions (experiment_id, variant, source, item_id, impressions) "
        "SELECT x.experiment_id, x.variant, '', i.item_id, COUNT(*) "
        "FROM impressions i JOIN exposures x ON x.id = i.exposure_id "
        "GROUP BY x.experiment_id, x.variant, i.item_id"
    )


def downgrade() -> None:
    op.drop_table("item_impressions")
