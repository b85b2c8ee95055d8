"""governance under concurrency and abuse: sign-in attempts per name, source address and
path (replacing per-user failures); sessions bound to the API key that opened them;
passwords that must be changed; stopped and per-choice turns whose metadata is sealed into
their associated data (aad_version 2); a sealed turn count per conversation

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (nullable, or with a server default) on both SQLite and PostgreSQL:
    # no table is rebuilt (see 0004 on why a rebuild on SQLite is dangerous).
    op.add_column("users", sa.Column("must_change_password", sa.Boolean(), nullable=False,
                                     server_default=sa.false()))
    op.add_column("admin_sessions", sa.Column("key_id", sa.Integer(), nullable=True))
    op.create_table(
        "login_attempts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("path", sa.String(16), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_login_attempts"),
    )
    op.create_index("ix_login_attempts_name_source", "login_attempts",
                    ["name", "source", "path", "at"])
    op.create_index("ix_login_attempts_source_at", "login_attempts", ["source", "at"])
    op.create_table(
        "login_locks",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("path", sa.String(16), nullable=False),
        sa.Column("until", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", "source", "path", name="pk_login_locks"),
    )
    op.drop_index("ix_auth_failures_user_at", table_name="auth_failures")
    op.drop_table("auth_failures")
    op.add_column("turns", sa.Column("stopped", sa.Boolean(), nullable=False,
                                     server_default=sa.false()))
    op.add_column("turns", sa.Column("choice", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("turns", sa.Column("aad_version", sa.Integer(), nullable=False,
                                     server_default="1"))
    op.drop_index("ix_turns_conversation_seq", table_name="turns")
    op.create_index("ix_turns_conversation_seq", "turns", ["conversation_id", "seq", "choice"],
                    unique=True)
    op.add_column("conversations", sa.Column("state_ct", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    raise RuntimeError("deepseekd migrations are append-only; restore a backup instead")
