"""tool calls: the calls an answer made, sealed like the answer

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain nullable ADD COLUMN on SQLite and PostgreSQL: no table is rebuilt.
    op.add_column("turns", sa.Column("tool_calls_ct", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    raise RuntimeError("deepseekd migrations are append-only; restore a backup instead")
