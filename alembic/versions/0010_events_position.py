"""The slate position of each event's item (`events.position`), found when it is stored.

Backfilled for the stored events from their exposures' impressions (NULL where the item was
not in the slate).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 13:30:00
"""

import sqlalchemy as sa

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("position", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE events SET position = (SELECT MIN(i.position) FROM impressions i "
        "WHERE i.exposure_id = events.exposure_id AND i.item_id = events.item_id) "
        "WHERE exposure_id IS NOT NULL AND item_id IS NOT NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_column("position")
