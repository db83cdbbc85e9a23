"""The heartbeats of locks held for a process's life (the active watcher's), so that a standby can tell
a frozen or cut-off holder from a live one (schema.LockRow).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

from daemon.queue.db.schema import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # if_not_exists: SQLite databases older than schema 2 are rebuilt from today's tables, this one included.
    op.create_table("locks",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("session_pid", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("since", UTCDateTime(), nullable=False),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_table("locks")
