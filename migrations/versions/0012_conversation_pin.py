"""pinned conversations: conversations.pinned_at (null: not pinned)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain nullable ADD COLUMN on SQLite and PostgreSQL: the table is not rebuilt.
    op.add_column("conversations", sa.Column("pinned_at", sa.Float(), nullable=True))


def downgrade() -> None:
    raise RuntimeError("deepseekd migrations are append-only; restore a backup instead")
