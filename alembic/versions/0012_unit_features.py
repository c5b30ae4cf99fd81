"""The feature store: each unit's online features per catalogue (`unit_features`).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 15:00:00
"""

import sqlalchemy as sa

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "unit_features",
        sa.Column("catalog", sa.String(length=128), nullable=False),
        sa.Column("unit_id", sa.String(length=128), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("recent", sa.Text(), nullable=False),
        sa.Column("cart", sa.Text(), nullable=False),
        sa.Column("counts", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("catalog", "unit_id"),
        # Rows rewritten by every event batch: room per page keeps PostgreSQL's updates HOT.
        postgresql_with={"fillfactor": 40},
    )


def downgrade() -> None:
    op.drop_table("unit_features")
