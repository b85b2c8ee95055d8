"""LoRA adapters loaded at run time, so a restart loads them again

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lora_adapters",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("base_model", sa.String(128), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("files", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("loaded_at", sa.Float(), nullable=False),
        sa.Column("loaded_by", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_lora_adapters"),
    )


def downgrade() -> None:
    raise RuntimeError("deepseekd migrations are append-only; restore a backup instead")
