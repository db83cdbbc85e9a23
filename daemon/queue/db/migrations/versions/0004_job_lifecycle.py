"""The job lifecycle of issue 22: storage trouble waits per job (storage_errors, retry_at), audio
that ended before its header said (announced_seconds), a job's folder settings kept apart from
the complete settings its checkpoint was made with (asked), so that touching a file keeps its
checkpoint, announcements kept until sent (deliveries), and each output name given to one input by
a unique key (output_names), filled from the names already written.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from daemon.queue.db.schema import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


COLUMNS = (sa.Column("storage_errors", sa.Integer(), nullable=False, server_default="0"),
           sa.Column("retry_at", UTCDateTime(), nullable=True),
           sa.Column("announced_seconds", sa.Float(), nullable=True),
           sa.Column("asked", sa.String(), nullable=True))


def upgrade() -> None:
    # Only those missing: SQLite databases older than schema 2 are rebuilt from today's tables.
    present = {column["name"] for column in sa.inspect(op.get_bind()).get_columns("jobs")}
    for column in COLUMNS:
        if column.name not in present:
            op.add_column("jobs", column)
    # What a job was queued with: its settings as they stand (folder settings, or for a job that
    # was started, complete ones, which a worker reads the same way).
    op.execute("UPDATE jobs SET asked = settings")
    op.create_table("deliveries",
                    sa.Column("id", sa.Integer(), nullable=False),
                    sa.Column("job_id", sa.Integer(), nullable=False),
                    sa.Column("kind", sa.String(), nullable=False),
                    sa.Column("worker", sa.String(), nullable=False),
                    sa.Column("created_at", UTCDateTime(), nullable=False),
                    sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
                    sa.PrimaryKeyConstraint("id"),
                    if_not_exists=True)
    for column in ("job_id", "worker"):
        op.create_index(f"ix_deliveries_{column}", "deliveries", [column], if_not_exists=True)
    op.create_table("output_names",
                    sa.Column("key", sa.String(), nullable=False),
                    sa.Column("input", sa.String(), nullable=False),
                    sa.PrimaryKeyConstraint("key"),
                    if_not_exists=True)
    op.execute("INSERT INTO output_names (key, input) SELECT o.key, MIN(j.path) FROM outputs o "
               "JOIN jobs j ON j.id = o.job_id WHERE o.key NOT IN (SELECT key FROM output_names) GROUP BY o.key")


def downgrade() -> None:
    op.drop_table("output_names")
    op.drop_table("deliveries")
    for column in reversed(COLUMNS):
        op.drop_column("jobs", column.name)
