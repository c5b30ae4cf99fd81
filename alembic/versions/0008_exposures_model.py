"""The registered model each exposure was served with (`exposures.model_id`, NULL for old rows).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 07:00:00
"""

import sqlalchemy as sa

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # No ON DELETE: a model that served exposures must not be deletable.
    with op.batch_alter_table("exposures", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key("fk_exposures_model_id", "models", ["model_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("exposures", schema=None) as batch_op:
        batch_op.drop_constraint("fk_exposures_model_id", type_="foreignkey")
        batch_op.drop_column("model_id")
