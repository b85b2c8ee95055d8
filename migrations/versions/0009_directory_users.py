"""directory users: where an account comes from, its groups, when the directory last knew it

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMNs on SQLite and PostgreSQL: no table is rebuilt. Existing accounts are
    # local ones.
    op.add_column(
        "users", sa.Column("source", sa.String(8), nullable=False, server_default="local")
    )
    op.add_column("users", sa.Column("external_id", sa.String(512), nullable=True))
    op.add_column("users", sa.Column("groups", sa.Text(), nullable=True))
    op.add_column("users", sa.Column("directory_seen_at", sa.Float(), nullable=True))
    op.add_column("users", sa.Column("directory_missing_at", sa.Float(), nullable=True))


def downgrade() -> None:
    raise RuntimeError("deepseekd migrations are append-only; restore a backup instead")
