"""reasoning models: a turn's reasoning (sealed, or only its HMAC) and token count; reasoning
tokens counted apart in the daily usage

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (nullable, or with a server default) on both SQLite and PostgreSQL:
    # no table is rebuilt (see 0004 on why a rebuild on SQLite is dangerous).
    op.add_column("turns", sa.Column("reasoning_ct", sa.LargeBinary(), nullable=True))
    op.add_column("turns", sa.Column("reasoning_hmac", sa.String(64), nullable=True))
    op.add_column("turns", sa.Column("reasoning_tokens", sa.Integer(), nullable=True))
    op.add_column("quota_usage", sa.Column("reasoning_tokens", sa.BigInteger(), nullable=False,
                                           server_default="0"))


def downgrade() -> None:
    raise RuntimeError("deepseekd migrations are append-only; restore a backup instead")
