"""fine-tuning jobs: progress, outcome, and the regression answers sealed under the
dataset's key

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "finetune_jobs",
        sa.Column("id", sa.Integer(), nullable=False, autoincrement=True),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("dataset_name", sa.String(64), nullable=False),
        sa.Column("dataset_version", sa.Integer(), nullable=False),
        sa.Column("base_model", sa.String(128), nullable=False),
        sa.Column("params", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("total_steps", sa.Integer(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("eval_before", sa.Float(), nullable=True),
        sa.Column("eval_after", sa.Float(), nullable=True),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("started_by", sa.String(64), nullable=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(512), nullable=True),
        sa.Column("report", sa.LargeBinary(), nullable=True),
        sa.Column("adapter_sha256", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_finetune_jobs"),
    )
    op.create_index("ix_finetune_jobs_status", "finetune_jobs", ["status"])


def downgrade() -> None:
    raise RuntimeError("deepseekd migrations are append-only; restore a backup instead")
