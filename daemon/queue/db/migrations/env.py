"""Alembic's entry point. daemon.queue.db.upgrade runs it with a connection already inside the
transaction that holds the migration lock, so every revision commits (or fails) as one."""

from alembic import context

from daemon.queue.db.schema import SQLModel

connection = context.config.attributes["connection"]
# Batch mode: SQLite changes a table by rebuilding it; PostgreSQL alters it in place.
context.configure(connection=connection, target_metadata=SQLModel.metadata, render_as_batch=True)
with context.begin_transaction():  # joins the caller's transaction
    context.run_migrations()
