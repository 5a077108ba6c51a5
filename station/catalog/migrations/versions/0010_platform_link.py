"""the platform link: a durable outbox, seen commands, SM3, central state, 2016 categories

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from alembic import op
import sqlalchemy as sa


revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("file_id", sa.Integer(), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", sa.DateTime(), nullable=True),
        sa.Column("answer", sa.String(16), nullable=True),
        sa.UniqueConstraint("kind", "key", name="uq_outbox_kind_key"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_outbox_pending", "outbox", ["kind", "delivered_at", "id"])
    op.create_index("ix_outbox_file_id", "outbox", ["file_id"])
    op.create_table(
        "platform_commands",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("issued_at", sa.String(40), nullable=True),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
    )
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sm3", sa.String(64), nullable=True))
        batch_op.add_column(sa.Column("sm3_error", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("central_state", sa.String(16), nullable=True))
        batch_op.add_column(sa.Column("central_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("central_error", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("retention_category", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("files", schema=None) as batch_op:
        for col in ("retention_category", "central_error", "central_at", "central_state",
                    "sm3_error", "sm3"):  # fmt: skip
            batch_op.drop_column(col)
    op.drop_table("platform_commands")
    op.drop_index("ix_outbox_file_id", "outbox")
    op.drop_index("ix_outbox_pending", "outbox")
    op.drop_table("outbox")
