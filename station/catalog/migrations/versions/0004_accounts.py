"""accounts: users, sessions, search indexes

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""

from alembic import op
import sqlalchemy as sa


revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("officer_no", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("failed_logins", sa.Integer(), nullable=False),
        sa.Column("locked_until", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("password_changed_at", sa.DateTime(), nullable=False),
        sa.Column("last_login_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("officer_no"),
    )
    op.create_table(
        "user_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("ended_why", sa.String(length=32), nullable=True),
        sa.Column("client", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    with op.batch_alter_table("user_sessions", schema=None) as batch_op:
        batch_op.create_index("ix_user_sessions_user_id", ["user_id"], unique=False)

    with op.batch_alter_table("files", schema=None) as batch_op:
        live = sa.text("deleted_at IS NULL")
        batch_op.create_index(
            "ix_files_recorded", ["recorded_at", "id"], unique=False, sqlite_where=live
        )
        batch_op.create_index(
            "ix_files_recorder_time", ["recorder_id", "recorded_at"], unique=False, sqlite_where=live
        )
        batch_op.create_index(
            "ix_files_kind_time", ["kind", "recorded_at"], unique=False, sqlite_where=live
        )
        batch_op.create_index(
            "ix_files_level_time", ["level", "recorded_at"], unique=False, sqlite_where=live
        )
        batch_op.create_index(
            "ix_files_important_time", ["important", "recorded_at"], unique=False, sqlite_where=live
        )
        batch_op.create_index(
            "ix_files_note", ["note"], unique=False, sqlite_where=sa.text("note IS NOT NULL")
        )


def downgrade() -> None:
    with op.batch_alter_table("files", schema=None) as batch_op:
        batch_op.drop_index("ix_files_note")
        batch_op.drop_index("ix_files_important_time")
        batch_op.drop_index("ix_files_level_time")
        batch_op.drop_index("ix_files_kind_time")
        batch_op.drop_index("ix_files_recorder_time")
        batch_op.drop_index("ix_files_recorded")
    with op.batch_alter_table("user_sessions", schema=None) as batch_op:
        batch_op.drop_index("ix_user_sessions_user_id")
    op.drop_table("user_sessions")
    op.drop_table("users")
