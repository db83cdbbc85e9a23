"""Speaker labels (issue 23): the voice prints of each job's recording, from which its labels, and
a duplicate's, are made again without the audio.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("voices",
                    sa.Column("id", sa.Integer(), nullable=False),
                    sa.Column("job_id", sa.Integer(), nullable=False),
                    sa.Column("seq", sa.Integer(), nullable=False),
                    sa.Column("start", sa.Float(), nullable=False),
                    sa.Column("end", sa.Float(), nullable=False),
                    sa.Column("vector", sa.LargeBinary(), nullable=False),
                    sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
                    sa.PrimaryKeyConstraint("id"),
                    sa.UniqueConstraint("job_id", "seq"),
                    if_not_exists=True)
    op.create_index("ix_voices_job_id", "voices", ["job_id"], if_not_exists=True)


def downgrade() -> None:
    op.drop_table("voices")
