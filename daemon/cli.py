"""Command line: `whisper-daemon run|watch|work|status|web|enqueue|retry|migrate|service`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

from loguru import logger
from sqlalchemy.exc import OperationalError

from daemon import config, logs
from daemon.config import FORMATS, Config, ConfigError, is_postgres
from daemon.files.folders import SettingsError, settings_for
from daemon.logs import printable
from daemon.processes.service import ACTIONS, add_service_parser, cmd_service
from daemon.processes.supervisor import EXIT_CONFIG, EXIT_TEMPFAIL, PARENT_PID_ENV
from daemon.queue.db import Job, JobStatus, SchemaMismatch, WorkerRow, connect, connect_readonly, describe
from daemon.queue.registry import gone, workers
from daemon.queue.standby import WATCHER_LOCK
from daemon.queue.summary import clock, ended_early, eta_seconds, language, worker_state

EXIT_USAGE = 2


# The settings flags, and which subcommands use each: a flag a subcommand would ignore is refused.
SETTINGS_FLAGS: dict[str, dict[str, Any]] = {
    "inbox": dict(help="folder to watch for recordings"),
    "outbox": dict(help="folder for the transcripts (not inside the inbox)"),
    "db": dict(help="the queue: a SQLite file, or postgresql://user@host/dbname shared by several machines"),
    "model": dict(help="tiny, tiny.en, base, base.en, small, …; a .pt file; or a CTranslate2 folder"),
    "language": dict(help="spoken language, a code (en) or a name (english); default: detect"),
    "formats": dict(help=f"files written per recording, comma-separated: {','.join(FORMATS)} (default srt)"),
    "quiet_seconds": dict(type=float, help="how long a new file must stay unchanged before it is queued (default 2)"),
    "web": dict(action="store_const", const="true", help="also serve the status page (see `whisper-daemon web`)"),
    "host": dict(help="the status page's address (default 127.0.0.1; any other needs web_token)"),
    "port": dict(type=int, help=f"the status page's port (default {config.WEB_PORT}; 0: any free one)"),
    "web_actions": dict(action="store_const", const="true", help="the status page may retry and re-transcribe jobs"),
    "config": dict(help=f"TOML settings file (default {config.default_config_file()} if present; \"\" for none)"),
}
SETTINGS_USED: dict[str, tuple[str, ...]] = {
    "run": tuple(SETTINGS_FLAGS),
    "watch": ("inbox", "outbox", "db", "quiet_seconds", "config"),
    "work": ("inbox", "outbox", "db", "model", "language", "formats", "config"),
    "status": ("db", "config"),
    "web": ("inbox", "db", "host", "port", "web_actions", "config"),
    "enqueue": ("inbox", "db", "config"),
    "retry": ("db", "config"),
    "migrate": ("inbox", "db", "config"),
    "service install": tuple(SETTINGS_FLAGS),
    **{f"service {action}": () for action in ACTIONS if action != "install"},  # they ignore settings
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _settings(command: str) -> argparse.ArgumentParser:
    """The settings flags for a subcommand's parser. All are parsed, so a flag it does not use is
    refused by name in main() (not as a puzzling 'unrecognized argument'); only its own are listed."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("settings (also WHISPER_DAEMON_<NAME> in the environment, or a TOML file)")
    for name, options in SETTINGS_FLAGS.items():
        shown = options if name in SETTINGS_USED[command] else {**options, "help": argparse.SUPPRESS}
        group.add_argument(_flag(name), dest=name, **shown)
    return parent


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="whisper-daemon", description="Transcribe recordings dropped into a folder.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", parents=[_settings("run")], help="watcher and worker together, in the foreground")
    sub.add_parser("watch", parents=[_settings("watch")], help="only the inbox watcher")
    work = sub.add_parser("work", parents=[_settings("work")], help="only the transcription worker")
    work.add_argument("--exit-when-empty", action="store_true", help="drain the queue, then exit 0")
    status = sub.add_parser("status", parents=[_settings("status")], help="show the jobs")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--limit", type=int, default=50)
    sub.add_parser("web", parents=[_settings("web")], help=f"serve the status page (http://127.0.0.1:{config.WEB_PORT})",
                   description="The queue, the workers and every transcript in a browser. Read-only unless "
                               "web_actions is set; the token for other machines is the web_token setting (TOML "
                               "or WHISPER_DAEMON_WEB_TOKEN: a flag would show it to every user in `ps`).")
    enqueue = sub.add_parser("enqueue", parents=[_settings("enqueue")], help="queue files directly")
    enqueue.add_argument("files", nargs="+", type=Path)
    retry = sub.add_parser("retry", parents=[_settings("retry")], help="queue finished or failed jobs again")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("ids", nargs="*", type=int, default=[])
    which.add_argument("--failed", action="store_true", help="every failed job")
    migrate = sub.add_parser("migrate", parents=[_settings("migrate")],
                             help="copy the queue (jobs, transcripts' segments, checkpoints) into another database")
    migrate.add_argument("--to", required=True, metavar="URL",
                         help="the new queue, e.g. postgresql://user@host/dbname (empty; its tables are made)")
    add_service_parser(sub, _settings("service install"))
    return parser


def _unused_flag(command: str, args: argparse.Namespace) -> str | None:
    """Why the command line is refused, if it gives a settings flag `command` would ignore."""
    for name in SETTINGS_FLAGS:
        if getattr(args, name) is not None and name not in SETTINGS_USED[command]:
            users = ", ".join(c for c, used in SETTINGS_USED.items() if name in used)
            return f"whisper-daemon {command}: {_flag(name)} is not used by {command}; it is used by {users}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = f"service {args.action}" if args.command == "service" else args.command
    if refusal := _unused_flag(command, args):
        print(refusal, file=sys.stderr)
        return EXIT_USAGE
    if args.command == "retry" and not args.ids and not args.failed:
        print("retry: give job IDs or --failed", file=sys.stderr)
        return EXIT_USAGE
    try:
        # Commands that use no settings don't read them either: a broken config must not block `service stop`.
        cfg = config.load(vars(args)) if SETTINGS_USED[command] else Config()
    except ConfigError as e:
        print(f"whisper-daemon: {e}", file=sys.stderr)
        return EXIT_CONFIG
    handler = COMMANDS[args.command]
    try:
        return handler(cfg, args)
    except SchemaMismatch as e:  # a newer whisper-daemon's database: restarting cannot help
        if command in ("watch", "work"):  # their log (and stderr, under a service manager)
            logger.error("{}", e)
        else:
            print(f"whisper-daemon {command}: {e}", file=sys.stderr)
        return EXIT_CONFIG


def _stop_on_signals() -> threading.Event:
    """First SIGTERM/SIGINT: stop at the next safe point. A second one: stop now."""
    stop = threading.Event()

    def handle(signum: int, _frame: Any) -> None:
        if stop.is_set():
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    parent = os.environ.get(PARENT_PID_ENV)
    if parent:
        threading.Thread(target=_stop_when_orphaned, args=(int(parent), stop), daemon=True).start()
    return stop


def _stop_when_orphaned(parent: int, stop: threading.Event) -> None:
    # Children of `run` sit in their own session; if `run` dies they must not linger.
    while not stop.wait(1.0):
        if os.getppid() != parent:
            logger.warning("parent process {} is gone; stopping", parent)
            stop.set()


def cmd_run(cfg: Config, args: argparse.Namespace) -> int:
    from daemon.processes.supervisor import Supervisor

    logs.setup(cfg.log_dir, "run", foreground=True)
    cfg.inbox.mkdir(parents=True, exist_ok=True)
    cfg.outbox.mkdir(parents=True, exist_ok=True)
    logger.info("inbox {} → outbox {}; queue {}; logs {}", cfg.inbox, cfg.outbox, describe(cfg.db), cfg.log_dir)
    return Supervisor(cfg, _stop_on_signals()).run()


def cmd_watch(cfg: Config, args: argparse.Namespace) -> int:
    from daemon.processes.watcher import Watcher
    from daemon.queue.db import Lock, LockLost, try_lock
    from daemon.queue.jobs import JobQueue
    from daemon.queue.standby import run_when_active

    logs.setup(cfg.log_dir, "watcher", foreground=sys.stderr.isatty() or PARENT_PID_ENV in os.environ)
    stop = _stop_on_signals()
    engine = connect(cfg.db)
    JobQueue(engine, inbox=cfg.inbox).adopt_absolute_paths()

    def watch(halt: threading.Event, lock: Lock) -> None:
        """Watch while this watcher is the active one; every write checks it still is (lock.check)."""
        queue = JobQueue(engine, inbox=cfg.inbox, fence=lock.check)

        def enqueue(path: Path, arrived: bool) -> None:
            try:
                result = queue.enqueue(path, settings=settings_for(path, cfg.inbox), arrived=arrived)
            except LockLost:  # another watcher took over while this one was stopped: it queues the file
                halt.set()
                return
            if result.created:
                logger.info("queued job {}: {}", result.job.id, path.name)

        def reject(path: Path, reason: str) -> None:
            try:
                result = queue.reject(path, reason)
            except LockLost:
                halt.set()
                return
            if result.created:
                logger.warning("job {} failed, not queued: {}", result.job.id, result.job.error)

        Watcher(cfg.inbox, enqueue, cfg.quiet_seconds, cfg.rescan_seconds, reject=reject,
                observer=cfg.observer).run(halt)

    run_when_active(lambda: try_lock(engine, WATCHER_LOCK), watch, stop, f"watcher of {cfg.inbox}")
    return 0


def cmd_work(cfg: Config, args: argparse.Namespace) -> int:
    from daemon.engine.weights import ModelError, ModelUnavailable
    from daemon.processes.crew import Crew

    logs.setup(cfg.log_dir, "worker", foreground=sys.stderr.isatty() or PARENT_PID_ENV in os.environ)
    crew = Crew(cfg, _stop_on_signals())
    try:
        crew.initialize()  # waits (paused) while the model does not fit in free memory yet
        crew.run(exit_when_empty=args.exit_when_empty)
    except ModelUnavailable as e:  # e.g. first boot, network not up yet: the service manager retries later
        logger.error("{} The worker exits with {} so that it is started again later.", e, EXIT_TEMPFAIL)
        return EXIT_TEMPFAIL
    except (ModelError, ConfigError) as e:  # restarting cannot help
        logger.error("{}", e)
        return EXIT_CONFIG
    finally:
        crew.shutdown()
    return EXIT_TEMPFAIL if crew.recycle else 0


def cmd_web(cfg: Config, args: argparse.Namespace) -> int:
    from daemon.web.serve import serve

    logs.setup(cfg.log_dir, "web", foreground=sys.stderr.isatty() or PARENT_PID_ENV in os.environ)
    return serve(cfg, _stop_on_signals())


def cmd_enqueue(cfg: Config, args: argparse.Namespace) -> int:
    from daemon.files.inputs import as_text, refusal
    from daemon.queue.jobs import JobQueue, OutsideInbox

    queue = JobQueue(connect(cfg.db), inbox=cfg.inbox)
    code = 0
    for path in args.files:
        shown = printable(as_text(path))
        # A link the user names is followed: what it points to must be a file the watcher would take.
        if os.path.lexists(path) and (reason := refusal(Path(os.path.realpath(path)))):
            print(f"{shown}: not queued: {reason}", file=sys.stderr)
            code = 1
            continue
        try:
            # The folders of the file as named give its settings.
            result = queue.enqueue(path, follow_link=True, settings=settings_for(path, cfg.inbox))
        except OSError as e:
            print(f"{shown}: cannot read it ({e.strerror})", file=sys.stderr)
            code = 1
            continue
        except (SettingsError, OutsideInbox) as e:
            print(f"{shown}: not queued: {e}", file=sys.stderr)
            code = 1
            continue
        state = "queued as" if result.created else "already known as"
        print(f"{shown}: {state} job {result.job.id}")
    return code


def cmd_retry(cfg: Config, args: argparse.Namespace) -> int:
    from daemon.queue.jobs import JobQueue

    queue = JobQueue(connect(cfg.db))
    jobs = queue.retry(args.ids, failed=args.failed)
    for job in jobs:
        print(f"job {job.id}: queued again ({printable(Path(job.path).name)})")
    others = {job.id: job for job in queue.get(set(args.ids) - {job.id for job in jobs})}
    for job_id in sorted(set(args.ids) - {job.id for job in jobs}):
        if job_id not in others:
            print(f"job {job_id}: no such job", file=sys.stderr)
        elif others[job_id].status in (JobStatus.QUEUED, JobStatus.RUNNING):
            print(f"job {job_id}: already {others[job_id].status.value}; nothing to retry", file=sys.stderr)
        else:
            print(f"job {job_id}: {others[job_id].status.value}, a newer job has this file; nothing to retry",
                  file=sys.stderr)
    return 1 if len(jobs) < len(set(args.ids)) else 0


def cmd_migrate(cfg: Config, args: argparse.Namespace) -> int:
    """Copy the queue of `cfg.db` into `--to`, once no worker or watcher uses it any more."""
    from daemon.queue.db import try_lock
    from daemon.queue.db.copy import CopyError, copy_queue
    from daemon.queue.jobs import JobQueue

    try:
        target_db = config.database(args.to)
    except ConfigError as e:
        print(f"whisper-daemon migrate: --to: {e}", file=sys.stderr)
        return EXIT_USAGE
    if describe(target_db) == describe(cfg.db):
        print("whisper-daemon migrate: --to names the queue it would copy", file=sys.stderr)
        return EXIT_USAGE
    source = connect(cfg.db)
    live = [w for w in workers(source) if not gone(w, datetime.now(timezone.utc))]
    # Held while copying: a watcher that starts meanwhile stands by instead of queueing into the old queue.
    watcher = try_lock(source, WATCHER_LOCK)
    if live or watcher is None:
        users = f"{len(live)} worker(s) still use" if live else "a watcher still uses"
        print(f"whisper-daemon migrate: {users} {describe(cfg.db)} (see `whisper-daemon status`): stop the "
              "daemon first (`whisper-daemon service stop`), then migrate", file=sys.stderr)
        if watcher is not None:
            watcher.release()
        return 1
    try:
        queue = JobQueue(source, inbox=cfg.inbox)
        queue.adopt_absolute_paths()  # as every machine sharing the inbox will read them
        if is_postgres(target_db) and (elsewhere := queue.unfinished_outside_inbox()):
            print(f"whisper-daemon migrate: job(s) {', '.join(str(job.id) for job in elsewhere)} are for files outside "
                  f"the inbox, which only this machine can read ({printable(elsewhere[0].path)}, …): let the daemon "
                  "finish them first, or copy the files into the inbox and retry, then migrate", file=sys.stderr)
            return 1
        copied = copy_queue(source, connect(target_db))
    except CopyError as e:
        print(f"whisper-daemon migrate: {e}", file=sys.stderr)
        return 1
    except OperationalError as e:
        print(f"whisper-daemon migrate: cannot reach {describe(target_db)}: {e.orig}", file=sys.stderr)
        return 1
    finally:
        watcher.release()
    print(f"copied {copied['jobs']} jobs, {copied['segments']} segments and {copied['outputs']} output records "
          f"from {describe(cfg.db)} to {describe(target_db)}.\nNow use the new queue everywhere: db = "
          f"\"{describe(target_db)}\" in config.toml, or `whisper-daemon service install --db {describe(target_db)}`. "
          f"{describe(cfg.db)} is left as it was.")
    return 0


def cmd_status(cfg: Config, args: argparse.Namespace) -> int:
    from daemon.queue.jobs import JobQueue

    try:
        engine = connect_readonly(cfg.db)
    except FileNotFoundError as e:
        print(e)
        return 0
    except SchemaMismatch as e:
        print(f"whisper-daemon status: {e}", file=sys.stderr)
        return 1
    except OperationalError as e:
        print(f"whisper-daemon status: cannot reach the queue {describe(cfg.db)}: {e.orig}", file=sys.stderr)
        return 1
    queue = JobQueue(engine)
    jobs = queue.jobs(args.limit)
    outputs = queue.outputs_of(job.id for job in jobs if job.id is not None)
    rows = workers(engine)
    engine.dispose()
    now = datetime.now(timezone.utc)
    if args.json:
        print(json.dumps({"workers": [_plain(w.model_dump()) | {"state": worker_state(w, now)} for w in rows],
                          "jobs": [_job_dict(j, outputs.get(j.id, [])) for j in jobs]}, indent=2, ensure_ascii=False))
    else:
        print(_workers_table(rows, now))
        print()
        print(_table(jobs, outputs))
    return 0


def _plain(data: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready: datetimes as ISO 8601, enums as their values."""
    return {k: v.isoformat() if isinstance(v, datetime) else v.value if isinstance(v, Enum) else v
            for k, v in data.items()}


def _job_dict(job: Job, outputs: list[Path]) -> dict[str, Any]:
    data = _plain(job.model_dump())
    data.pop("prompt")  # decoder state, not for people
    return data | {"outputs": [str(path) for path in outputs]}


def _workers_table(registered: list[WorkerRow], now: datetime) -> str:
    if not registered:
        return "no worker running"
    rows = [("WORKER", "HOST", "PID", "STATE", "MODEL", "PRECISION", "RSS", "JOB", "HEARTBEAT", "REASON")]
    for w in registered:
        rows.append((w.id, printable(w.host), str(w.pid), worker_state(w, now), w.model or "-", w.precision or "-",
                     "-" if w.rss_mb is None else f"{w.rss_mb:.0f} MB", str(w.current_job_id or "-"),
                     f"{(now - w.heartbeat_at).total_seconds():.0f} s ago", printable(w.reason or "")))
    return _columns(rows)


PROGRESS_WIDTH = 20


def progress_line(job: Job) -> str:
    """`[########------------]  40%  1:12 of 3:00, ETA 0:25` for a running job."""
    filled = round(job.progress * PROGRESS_WIDTH)
    bar = "#" * filled + "-" * (PROGRESS_WIDTH - filled)
    line = f"[{bar}] {job.progress:4.0%}  {clock(job.processed_seconds)} of {clock(job.audio_seconds)}"
    if (eta := eta_seconds(job)) is not None:
        line += f", ETA {clock(eta)}"
    return line


def _table(jobs: list[Job], outputs: Mapping[int | None, list[Path]]) -> str:
    """The jobs, one a line; `outputs`: the files of those that have any (JobQueue.outputs)."""
    if not jobs:
        return "no jobs yet: drop a recording into the inbox"
    rows = [("ID", "STATUS", "DURATION", "RTF", "TRIES", "LANG", "FILE", "PROGRESS / OUTPUT / ERROR")]
    for job in jobs:
        if job.status == JobStatus.RUNNING or (job.status == JobStatus.QUEUED and job.processed_seconds):
            detail = progress_line(job) + (f"; {job.error}" if job.error else "")  # why it waits
        elif job.status in (JobStatus.DONE, JobStatus.DUPLICATE) and outputs.get(job.id):
            detail = ", ".join(path.name for path in outputs[job.id]) + ended_early(job)
        else:
            detail = job.error or ""
        rows.append((str(job.id), job.status.value, clock(job.audio_seconds),
                     "-" if job.rtf is None else f"{job.rtf:.2f}", str(job.attempts), printable(language(job)),
                     printable(Path(job.path).name),
                     printable(detail)))
    return _columns(rows)


def _columns(rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns; the last one is free-form and not padded."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows)


COMMANDS = {"run": cmd_run, "watch": cmd_watch, "work": cmd_work, "status": cmd_status, "web": cmd_web,
            "enqueue": cmd_enqueue, "retry": cmd_retry, "migrate": cmd_migrate, "service": cmd_service}
