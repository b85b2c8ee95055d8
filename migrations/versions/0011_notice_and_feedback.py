"""the acceptable-use notice (its versions and who accepted which) and answer feedback on turns

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notices",
        sa.Column("version", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("created_by", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("version", name="pk_notices"),
    )
    op.create_table(
        "notice_acceptances",
        sa.Column("user_id", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("version", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("accepted_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "version", name="pk_notice_acceptances"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE",
                                name="fk_notice_acceptances_user_id_users"),
    )
    # Plain nullable ADD COLUMNs on SQLite and PostgreSQL: the turns table is not rebuilt.
    op.add_column("turns", sa.Column("feedback_rating", sa.String(8), nullable=True))
    op.add_column("turns", sa.Column("feedback_comment_ct", sa.LargeBinary(), nullable=True))
    op.add_column("turns", sa.Column("feedback_at", sa.Float(), nullable=True))
    op.create_index("ix_turns_feedback_at", "turns", ["feedback_at"])


def downgrade() -> None:
    raise RuntimeError("deepseekd migrations are append-only; restore a backup instead")
