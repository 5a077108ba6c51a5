"""S3 forwarding state in the catalog: forward_objects and forward_parts (was forward.db)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from alembic import op
import sqlalchemy as sa


revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "forward_objects",
        sa.Column("key", sa.Text(), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("file_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("upload_id", sa.Text(), nullable=True),
        sa.Column("part_size", sa.Integer(), nullable=True),
        sa.Column("mode", sa.String(8), nullable=True),
        sa.Column("etag", sa.Text(), nullable=True),
        sa.Column("checksum", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_forward_objects_sha256", "forward_objects", ["sha256"])
    op.create_index("ix_forward_objects_file_id", "forward_objects", ["file_id"])
    op.create_table(
        "forward_parts",
        sa.Column("upload_id", sa.Text(), primary_key=True),
        sa.Column("part_number", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("etag", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("md5", sa.String(32), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("forward_parts")
    op.drop_index("ix_forward_objects_file_id", "forward_objects")
    op.drop_index("ix_forward_objects_sha256", "forward_objects")
    op.drop_table("forward_objects")
