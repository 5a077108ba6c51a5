"""a stored file whose recorder copy is being deleted right now is not deleted meanwhile

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from alembic import op
import sqlalchemy as sa


revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("card_clearing_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_column("card_clearing_at")
