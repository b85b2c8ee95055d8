"""break-glass sessions (emergency access and its review) and the SIEM forwarder's cursors

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "breakglass",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("reason_code", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(512), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("target", sa.String(64), nullable=True),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.Column("end_reason", sa.String(16), nullable=True),
        sa.Column("start_event", sa.BigInteger(), nullable=True),
        sa.Column("reviewed_at", sa.Float(), nullable=True),
        sa.Column("reviewed_by", sa.String(64), nullable=True),
        sa.Column("review_comment", sa.String(2000), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_breakglass"),
    )
    op.create_index("ix_breakglass_user_id", "breakglass", ["user_id"])
    op.create_index("ix_breakglass_expires_at", "breakglass", ["expires_at"])
    op.create_table(
        "export_cursors",
        sa.Column("sink", sa.String(64), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("sink", name="pk_export_cursors"),
    )


def downgrade() -> None:
    raise RuntimeError("deepseekd migrations are append-only; restore a backup instead")
