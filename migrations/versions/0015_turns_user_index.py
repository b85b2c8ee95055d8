"""an index of turns by user: deleting all of a user's conversations (and erasing the user)
deleted their turns by a scan of every turn, inside the one write transaction

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_turns_user_id", "turns", ["user_id"])


def downgrade() -> None:
    raise RuntimeError("deepseekd migrations are append-only; restore a backup instead")
