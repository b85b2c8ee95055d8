"""replicas sharing one database report themselves; a master key version can be prepared
(known, copied to every host) before a rotation makes it the one that wraps; a session
opened through the OpenID provider keeps its sealed ID token for logout on any replica

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "key_checks",
        sa.Column("prepared", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column("admin_sessions", sa.Column("provider_hint", sa.Text(), nullable=True))
    op.create_table(
        "replicas",
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("keys_dir", sa.String(1024), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("seen_at", sa.Float(), nullable=False),
        sa.Column("key_versions", sa.String(255), nullable=False),
        sa.Column("wraps_with", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("host", "keys_dir", name="pk_replicas"),
    )


def downgrade() -> None:
    raise RuntimeError("deepseekd migrations are append-only; restore a backup instead")
