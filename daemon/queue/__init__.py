"""The queue: jobs and their leases (jobs.py), the workers' registry (registry.py), the one
active watcher per queue (standby.py), and the databases behind them (db/: SQLite, PostgreSQL).
No torch here: the watcher and `status` use it."""
