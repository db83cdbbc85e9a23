"""The processes a service manager runs: the watcher (watcher.py), the worker (worker.py, with its
guards.py), both at once (supervisor.py), and their launchd/systemd definitions (service.py)."""
