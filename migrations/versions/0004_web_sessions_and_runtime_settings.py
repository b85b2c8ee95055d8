"""browser sessions (a kind per session), settings changed at run time, sealed TOTP seeds

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
    # TOTP secrets are stored sealed from now on ("sealed1:" + base64), longer than 64.
    # Only PostgreSQL enforces VARCHAR lengths. On SQLite a type change means rebuilding
    # `users`, and with foreign keys on, dropping the old table would cascade-delete every
    # API key, session and conversation: never rebuild a parent table there.
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("users", "totp_secret", type_=sa.String(255), existing_nullable=True)
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
