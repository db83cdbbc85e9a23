"""Schema 2, the last one made by hand (daemon/queue/db/sqlite.py upgrades older SQLite databases to it
and marks them with this revision).

Revision ID: 0001
Revises:
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

from daemon.queue.db.schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('jobs',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('path', sa.String(), nullable=False),
        sa.Column('sha256', sa.String(), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('mtime_ns', sa.BigInteger(), nullable=False),
        sa.Column('status', sa.Enum('queued', 'running', 'done', 'failed', 'duplicate', 'superseded', name='job_status', native_enum=False, create_constraint=True, length=16), nullable=False),
        sa.Column('error', sa.String(), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('crashes', sa.Integer(), server_default='0', nullable=False),
        sa.Column('resumed_from', sa.Float(), server_default='0', nullable=False),
        sa.Column('holder', sa.String(), nullable=True),
        sa.Column('lease_until', UTCDateTime(), nullable=True),
        sa.Column('audio_seconds', sa.Float(), nullable=True),
        sa.Column('processed_seconds', sa.Float(), nullable=False),
        sa.Column('progress', sa.Float(), nullable=False),
        sa.Column('rtf', sa.Float(), nullable=True),
        sa.Column('language', sa.String(), nullable=True),
        sa.Column('settings', sa.String(), nullable=True),
        sa.Column('prompt', sa.String(), nullable=False),
        sa.Column('model', sa.String(), nullable=True),
        sa.Column('precision', sa.String(), nullable=True),
        sa.Column('duplicate_of', sa.Integer(), nullable=True),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.Column('started_at', UTCDateTime(), nullable=True),
        sa.Column('finished_at', UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(['duplicate_of'], ['jobs.id'], ),
        sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_jobs_holder'), 'jobs', ['holder'], unique=False)
    op.create_index(op.f('ix_jobs_path'), 'jobs', ['path'], unique=False)
    op.create_index(op.f('ix_jobs_sha256'), 'jobs', ['sha256'], unique=False)
    op.create_index(op.f('ix_jobs_status'), 'jobs', ['status'], unique=False)
    op.create_table('outputs',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('job_id', sa.Integer(), nullable=False),
        sa.Column('format', sa.String(), nullable=False),
        sa.Column('path', sa.String(), nullable=False),
        sa.Column('key', sa.String(), nullable=False),
        sa.Column('sha256', sa.String(), nullable=True),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ),
        sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_outputs_job_id'), 'outputs', ['job_id'], unique=False)
    op.create_index(op.f('ix_outputs_key'), 'outputs', ['key'], unique=False)
    op.create_table('segments',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('job_id', sa.Integer(), nullable=False),
        sa.Column('seq', sa.Integer(), nullable=False),
        sa.Column('start', sa.Float(), nullable=False),
        sa.Column('end', sa.Float(), nullable=False),
        sa.Column('text', sa.String(), nullable=False),
        sa.Column('words', sa.String(), server_default='[]', nullable=False),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('job_id', 'seq')
    )
    op.create_index(op.f('ix_segments_job_id'), 'segments', ['job_id'], unique=False)
    op.create_table('workers',
        sa.Column('id', sa.String(), nullable=False),
        sa.Column('pid', sa.Integer(), nullable=False),
        sa.Column('host', sa.String(), nullable=False),
        sa.Column('state', sa.Enum('idle', 'busy', 'paused', 'backoff', name='worker_state', native_enum=False, create_constraint=True, length=16), nullable=False),
        sa.Column('reason', sa.String(), nullable=True),
        sa.Column('model', sa.String(), nullable=True),
        sa.Column('precision', sa.String(), nullable=True),
        sa.Column('rss_mb', sa.Float(), nullable=True),
        sa.Column('current_job_id', sa.Integer(), nullable=True),
        sa.Column('started_at', UTCDateTime(), nullable=False),
        sa.Column('heartbeat_at', UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(['current_job_id'], ['jobs.id'], ),
        sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_workers_state'), 'workers', ['state'], unique=False)


def downgrade() -> None:
    for table in ("workers", "segments", "outputs", "jobs"):
        op.drop_table(table)
