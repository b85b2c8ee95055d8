"""browser sessions (a kind per session) and settings changed at run time

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("admin_sessions") as batch:
        batch.add_column(sa.Column("kind", sa.String(8), nullable=False, server_default="admin"))
    op.create_table(
        "runtime_settings",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("updated_by", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("key", name="pk_runtime_settings"),
    )


def downgrade() -> None:
    raise RuntimeError("deepseekd migrations are append-only; restore a backup instead")
