"""job owners, event ids never reused, disks known by identity, untrusted-clock files

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from alembic import op
import sqlalchemy as sa


revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ingest_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("officer_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key("fk_ingest_jobs_officer", "officers", ["officer_id"], ["id"])
    # the officer the recorder was bound to when each unfinished job began
    op.execute(
        "UPDATE ingest_jobs SET officer_id = "
        "(SELECT officer_id FROM recorders WHERE recorders.id = ingest_jobs.recorder_id)"
    )
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("clock_untrusted", sa.Boolean(), nullable=False, server_default="0")
        )
    op.create_table(
        "disks",
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("taken_at", sa.DateTime(), nullable=False),
        sa.Column("taken_by", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("uuid"),
    )
    # AUTOINCREMENT: an id once used is never handed out again, even after the newest
    # entries were deleted, so a deleted tail cannot be covered by new entries
    with op.batch_alter_table(
        "events", recreate="always", table_kwargs={"sqlite_autoincrement": True}
    ) as batch_op:
        pass


def downgrade() -> None:
    op.drop_table("disks")
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_column("clock_untrusted")
    with op.batch_alter_table("events", recreate="always") as batch_op:
        pass
    with op.batch_alter_table("ingest_jobs", schema=None) as batch_op:
        batch_op.drop_constraint("fk_ingest_jobs_officer", type_="foreignkey")
        batch_op.drop_column("officer_id")
