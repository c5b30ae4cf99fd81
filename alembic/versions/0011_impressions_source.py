"""The retrieval source of each impression (`impressions.source`, NULL for old rows).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 13:00:00
"""

import sqlalchemy as sa

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column without a default: PostgreSQL changes only its catalogue (no table
    # rewrite of the largest table) and SQLite appends it with ALTER TABLE ADD COLUMN.
    op.add_column("impressions", sa.Column("source", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("impressions", schema=None) as batch_op:
        batch_op.drop_column("source")
