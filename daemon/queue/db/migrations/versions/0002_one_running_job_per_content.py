"""One running job per content, enforced by the database: PostgreSQL's workers claim concurrently.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

RUNNING_CONTENT = sa.text("status = 'running' AND sha256 <> ''")


def upgrade() -> None:
    # if_not_exists: SQLite databases older than schema 2 are rebuilt from today's tables, index included.
    op.create_index("ix_jobs_one_running_per_content", "jobs", ["sha256"], unique=True, if_not_exists=True,
                    sqlite_where=RUNNING_CONTENT, postgresql_where=RUNNING_CONTENT)


def downgrade() -> None:
    op.drop_index("ix_jobs_one_running_per_content", "jobs")
