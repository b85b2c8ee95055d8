"""fine-tuning releases: the versions of a promoted adapter kept for rollback

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "finetune_releases",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("base_model", sa.String(128), nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("files", sa.Text(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("promoted_at", sa.Float(), nullable=False),
        sa.Column("promoted_by", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_finetune_releases"),
    )
    op.create_index(
        "uq_finetune_releases_name_version", "finetune_releases", ["name", "version"], unique=True
    )


def downgrade() -> None:
    raise RuntimeError("deepseekd migrations are append-only; restore a backup instead")
