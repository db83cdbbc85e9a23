"""`service install|uninstall|start|stop|restart|status`: run the watcher and the worker at login.

macOS gets two LaunchAgents rendered from the launchd/ templates, Linux two systemd --user units.
`plan()` only computes what to write and what to run, so --dry-run and the tests see exactly what
`execute()` would do, without touching the machine.

The settings can hold secrets (the queue's PostgreSQL password, the webhook's password or token),
so they live only in files nobody else may read: the plists (0600), and for systemd an
EnvironmentFile (0600) that the world-readable units name. --dry-run prints them masked.
"""

from __future__ import annotations

import argparse
import os
import plistlib
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.config import APP, Config, is_postgres
from daemon.files.outputs import FILE_MODE, write_atomic
from daemon.processes.supervisor import EXIT_CONFIG, EXIT_TEMPFAIL

ACTIONS = ("install", "uninstall", "start", "stop", "restart", "status")
EXIT_UNSUPPORTED = 2  # like a usage error: nothing was attempted
PROJECT_DIR = Path(__file__).resolve().parents[2]  # cwd for `-m daemon`: importable even if not installed
TEMPLATE_DIR = PROJECT_DIR / "launchd"
TEMPLATES = {"watch": "io.github.whisper-daemon.watcher.plist.in", "work": "io.github.whisper-daemon.worker.plist.in",
             "web": "io.github.whisper-daemon.web.plist.in"}
UNITS = {"watch": "whisper-daemon-watcher.service", "work": "whisper-daemon-worker.service",
         "web": "whisper-daemon-web.service"}
ENVIRONMENT_FILE = "service.env"  # the systemd units' settings, in ~/.config/whisper-daemon
# `launchctl bootout` of a service that is not loaded: 3 (ESRCH) or 113 ("Could not find service").
LAUNCHD_NOT_LOADED = frozenset({3, 113})
# `systemctl disable` of a unit that is not there: 1 ("Unit file … does not exist") or 5 (not loaded).
SYSTEMD_NO_UNIT = frozenset({1, 5})
WAIT_UNLOADED_SECONDS = 30.0  # bootout returns before the job has exited; ExitTimeOut (20 s) + margin
TCC_FOLDERS = ("Desktop", "Documents", "Downloads")  # reading these prompts for permission on macOS
OK = frozenset({0})
DESCRIPTIONS = {"watch": "inbox watcher", "work": "transcription worker", "web": "status page"}


class ServiceError(Exception):
    """The service files cannot be built; the message says why."""


class UnsupportedPlatform(ServiceError):
    pass


@dataclass(frozen=True)
class Step:
    """One command. `probe` is read-only and exits 0 when the service is loaded."""

    argv: list[str]
    ok: frozenset[int] = OK  # exit codes that mean "done" or "already in that state"
    probe: list[str] | None = None
    run_if_loaded: bool | None = None  # with probe: run only when loaded (True) / not loaded (False)
    wait_unloaded: bool = False  # with probe: afterwards wait until the service is gone


@dataclass(frozen=True)
class Remove:
    path: Path


PRIVATE_MODE = 0o600  # for the files that hold the settings


@dataclass
class Plan:
    files: dict[Path, str] = field(default_factory=dict)  # written before any command runs
    dirs: list[Path] = field(default_factory=list)  # created first: launchd won't create log folders
    steps: list[Step | Remove] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # printed after a successful run
    keep_going: bool = False  # status: report every service even if one is down
    private: frozenset[Path] = frozenset()  # of those, the ones that hold the settings: PRIVATE_MODE
    shown: dict[Path, str] = field(default_factory=dict)  # as --dry-run prints them: secrets masked

    @property
    def commands(self) -> list[list[str]]:
        return [s.argv for s in self.steps if isinstance(s, Step)]


def plan(action: str, cfg: Config, platform: str | None = None, home: Path | None = None,
         uid: int | None = None, python: str | None = None) -> Plan:
    """What `action` writes and runs; platform, home, uid and interpreter default to this machine's."""
    if action not in ACTIONS:
        raise ServiceError(f"unknown action {action!r}; choose from {', '.join(ACTIONS)}")
    platform = sys.platform if platform is None else platform
    home = Path.home() if home is None else home
    # abspath, not resolve(): the venv's bin/python is a symlink, and following it would leave the venv.
    python = python or sys.executable
    if not python:  # embedded interpreters may not know their own path
        raise ServiceError("cannot tell which Python interpreter runs whisper-daemon")
    python = os.path.abspath(python)
    if platform == "darwin":
        return _launchd_plan(action, cfg, home, os.getuid() if uid is None else uid, python)
    if platform.startswith("linux"):
        return _systemd_plan(action, cfg, home, python)
    raise UnsupportedPlatform(f"`service` supports macOS (launchd) and Linux (systemd --user), not {platform!r}; "
                              "run `whisper-daemon run` under your own service manager instead")


def _services(action: str, cfg: Config, installed: Callable[[str], bool]) -> tuple[list[str], list[str]]:
    """The commands served, and those to take down: the status page (`web`) is one when `install`
    is given `web`, or when it is installed already (for the other actions, which take no settings).
    An install without `web` takes down a status page installed earlier."""
    web = cfg.web if action == "install" else installed("web")
    return ["watch", "work", *(["web"] if web else [])], ["web"] if action == "install" and not web and \
        installed("web") else []


def _search_path(python: str, *system: str) -> str:
    # Services start with a bare PATH; put the venv's bin first so tools it installs are found.
    return ":".join(dict.fromkeys([os.path.dirname(python), *system]))


# ---------------------------------------------------------------- launchd (macOS)

def render_plist(template: Path, values: Mapping[str, str], env: Mapping[str, str]) -> dict[str, Any]:
    """The template with every @NAME@ replaced, plus `env` in EnvironmentVariables.

    Going through plistlib (not text replacement) keeps the XML well-formed and escaped whatever
    the paths contain, and keeps every value's type.
    """
    try:
        data = plistlib.loads(template.read_bytes())
    except FileNotFoundError as e:
        raise ServiceError(f"LaunchAgent template {template} is missing; reinstall from a checkout") from e
    data = _substitute(data, values)
    data["EnvironmentVariables"] = {**data.get("EnvironmentVariables", {}), **env}
    return data


def _substitute(node: Any, values: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        def value(m: re.Match[str]) -> str:
            if m.group(1) not in values:
                raise ServiceError(f"unknown placeholder {m.group(0)} in a LaunchAgent template")
            return values[m.group(1)]
        return re.sub(r"@([A-Z_]+)@", value, node)  # one pass: values are never re-substituted
    if isinstance(node, list):
        return [_substitute(item, values) for item in node]
    if isinstance(node, dict):
        return {key: _substitute(item, values) for key, item in node.items()}
    return node


def _launchd_plan(action: str, cfg: Config, home: Path, uid: int, python: str) -> Plan:
    domain = f"gui/{uid}"
    log_dir = home / "Library" / "Logs" / APP
    values = {"PYTHON": python, "WORKDIR": str(PROJECT_DIR), "LOGDIR": str(log_dir),
              "PATH": _search_path(python, "/opt/homebrew/bin", "/usr/local/bin", "/usr/bin", "/bin",
                                   "/usr/sbin", "/sbin")}
    agents = home / "Library" / "LaunchAgents"

    def agent(command: str) -> Path:
        return agents / TEMPLATES[command].removesuffix(".in")

    served, retired = _services(action, cfg, lambda command: agent(command).exists())
    files: dict[Path, str] = {}
    shown: dict[Path, str] = {}
    targets: list[str] = []
    for command in served:
        data = render_plist(TEMPLATE_DIR / TEMPLATES[command], values, cfg.to_env())
        path = agents / f"{data['Label']}.plist"
        files[path] = plistlib.dumps(data).decode()
        shown[path] = plistlib.dumps(render_plist(TEMPLATE_DIR / TEMPLATES[command], values,
                                                  cfg.to_env(masked=True))).decode()
        targets.append(f"{domain}/{data['Label']}")
    old = [(f"{domain}/{agent(command).stem}", agent(command)) for command in retired]

    def probe(target: str) -> list[str]:
        return ["launchctl", "print", target]

    def bootout(target: str) -> Step:
        return Step(["launchctl", "bootout", target], OK | LAUNCHD_NOT_LOADED, probe(target), wait_unloaded=True)

    def bootstrap(path: Path, **when: Any) -> Step:
        return Step(["launchctl", "bootstrap", domain, str(path)], **when)

    if action == "install":
        # Bootout first so a reinstall restarts with the new settings.
        return Plan(files, [log_dir], [*(s for target, path in old for s in (bootout(target), Remove(path))),
                                       *map(bootout, targets), *map(bootstrap, files)],
                    _install_notes(cfg) + _launchd_notes(cfg, home, log_dir, python),
                    private=frozenset(files), shown=shown)
    if action == "uninstall":
        return Plan(steps=[*map(bootout, targets), *map(Remove, files)])
    if action == "start":  # kickstart if loaded, else bootstrap (RunAtLoad starts it)
        steps: list[Step | Remove] = []
        for target, path in zip(targets, files):
            steps += [Step(["launchctl", "kickstart", target], probe=probe(target), run_if_loaded=True),
                      bootstrap(path, probe=probe(target), run_if_loaded=False)]
        return Plan(dirs=[log_dir], steps=steps)
    if action == "stop":
        return Plan(steps=[bootout(t) for t in targets])
    if action == "restart":
        return Plan(steps=[Step(["launchctl", "kickstart", "-k", t]) for t in targets])
    return Plan(steps=[Step(probe(t)) for t in targets], keep_going=True)


def _launchd_notes(cfg: Config, home: Path, log_dir: Path, python: str) -> list[str]:
    notes = [f"Logs: {cfg.log_dir} (watcher.log, worker.log); launchd's stdout/stderr: {log_dir}/*.out.log, *.err.log"]
    protected = [home / name for name in TCC_FOLDERS]
    used = [cfg.inbox, cfg.outbox, PROJECT_DIR, Path(python)] + ([] if is_postgres(cfg.db) else [Path(cfg.db)])
    if any(p.is_relative_to(folder) for p in used for folder in protected):
        notes.append("Some paths are inside ~/Desktop, ~/Documents or ~/Downloads: macOS will ask whether "
                     f"{python} may access them (or deny it silently). Approve it in System Settings → "
                     "Privacy & Security → Files and Folders, or move the folders elsewhere (e.g. ~/Transcribe).")
    return notes


# ---------------------------------------------------------------- systemd --user (Linux)

def _systemd_quote(text: str, exec_line: bool = False) -> str:
    """One word for a unit file: double quotes, C escapes, %% for specifiers, $$ on Exec lines."""
    if any(ord(c) < 32 or c == "\x7f" for c in text):
        raise ServiceError(f"{text!r} contains a control character; systemd unit files cannot hold it")
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return '"' + (text.replace("$", "$$") if exec_line else text) + '"'


def render_environment_file(env: Mapping[str, str]) -> str:
    """An EnvironmentFile: each value double-quoted, as systemd reads it (POSIX shell double quotes:
    a backslash before \\ " $ ` keeps that character)."""
    lines = ["# Written by `whisper-daemon service install` (the settings of both services); run that again "
             "instead of editing this file."]
    for key, value in sorted(env.items()):
        if any(ord(c) < 32 or c == "\x7f" for c in value):
            raise ServiceError(f"{key} contains a control character; a systemd environment file cannot hold it")
        quoted = re.sub(r'([\\"$`])', r"\\\1", value)
        lines.append(f'{key}="{quoted}"')
    return "\n".join([*lines, ""])


def render_unit(command: str, python: str, env: Mapping[str, str], environment_file: Path) -> str:
    """The systemd --user unit for `python -m daemon <command>`; its settings are in `environment_file`."""
    name = UNITS[command].removesuffix(".service")
    exec_start = " ".join(_systemd_quote(a, exec_line=True) for a in [python, "-m", "daemon", command])
    _systemd_quote(str(environment_file))  # refuses a control character
    lines = [
        "# Written by `whisper-daemon service install`; run that again instead of editing this file.",
        "[Unit]",
        f"Description=whisper-daemon {DESCRIPTIONS[command]}",
        "",
        "[Service]",
        f"ExecStart={exec_start}",
        f"WorkingDirectory={str(PROJECT_DIR).replace('%', '%%')}",
        "# The settings, which may hold passwords: readable by you alone.",
        f"EnvironmentFile={str(environment_file).replace('%', '%%')}",
        *(f"Environment={_systemd_quote(f'{k}={v}')}" for k, v in sorted(env.items())),
        "# Restart after a crash (non-zero exit or a signal), not after a clean exit 0.",
        "Restart=on-failure",
        "RestartSec=10",
        f"# {EXIT_CONFIG} = EX_CONFIG: the configuration is wrong, so restarting cannot help. {EXIT_TEMPFAIL} = "
        "EX_TEMPFAIL (start again later: no network yet for a model download, or memory cap reached) is restarted.",
        f"RestartPreventExitStatus={EXIT_CONFIG}",
        "# SIGTERM first (the worker stops at the next chunk boundary), SIGKILL 20 s later.",
        "KillSignal=SIGTERM",
        "KillMode=mixed",
        "TimeoutStopSec=20",
        f"SyslogIdentifier={name}",
    ]
    if command == "work":  # keep the CPU- and disk-heavy worker polite towards interactive use
        lines += ["Nice=10", "IOSchedulingClass=idle"]
    return "\n".join([*lines, "", "[Install]", "WantedBy=default.target", ""])


def _systemd_plan(action: str, cfg: Config, home: Path, python: str) -> Plan:
    unit_dir = home / ".config" / "systemd" / "user"
    settings = home / ".config" / APP / ENVIRONMENT_FILE
    env = {"PATH": _search_path(python, "/usr/local/bin", "/usr/bin", "/bin")}
    served, retired = _services(action, cfg, lambda command: (unit_dir / UNITS[command]).exists())
    files = {settings: render_environment_file(cfg.to_env())}
    files |= {unit_dir / UNITS[command]: render_unit(command, python, env, settings) for command in served}
    shown = {settings: render_environment_file(cfg.to_env(masked=True))}
    units = [UNITS[command] for command in served]
    systemctl = ["systemctl", "--user"]
    if action == "install":
        # Stop first so a reinstall restarts with the new settings; `enable --now` then starts them.
        steps: list[Step | Remove] = [Step([*systemctl, "daemon-reload"]),
                                      Step([*systemctl, "stop", *units], OK | {5}),
                                      Step([*systemctl, "enable", "--now", *units])]
        for command in retired:  # a status page installed earlier, not asked for now
            steps += [Step([*systemctl, "disable", "--now", UNITS[command]], OK | SYSTEMD_NO_UNIT),
                      Remove(unit_dir / UNITS[command]), Step([*systemctl, "daemon-reload"])]
        notes = _install_notes(cfg) + [
            f"Logs: {cfg.log_dir} (watcher.log, worker.log), and `journalctl --user -u {units[1]} -f`",
            "To keep the services running with nobody logged in (and start them at boot), run once: "
            "loginctl enable-linger $USER"]
        return Plan(files, steps=steps, notes=notes, private=frozenset({settings}), shown=shown)
    if action == "uninstall":
        return Plan(steps=[Step([*systemctl, "disable", "--now", *units], OK | SYSTEMD_NO_UNIT),
                           *map(Remove, files), Step([*systemctl, "daemon-reload"])])
    if action == "status":
        return Plan(steps=[Step([*systemctl, "status", "--no-pager", *units])], keep_going=True)
    return Plan(steps=[Step([*systemctl, action, *units])])


def _install_notes(cfg: Config) -> list[str]:
    # The services get every setting as it is now (Config.to_env), not only the config file: say so.
    source = f"settings from {cfg.config}" if cfg.config else "no config file"
    return [f"Installed with inbox {cfg.inbox}, outbox {cfg.outbox}, model {cfg.model} ({source}). After changing "
            "settings, run `whisper-daemon service install` again."]


# ---------------------------------------------------------------- dry run and execution

def describe(plan: Plan) -> str:
    """The plan as text: each file with its contents, then each command, shell-quoted."""
    out = [f"# create folder {d}" for d in plan.dirs]
    for path, text in plan.files.items():
        mode = f" (mode {PRIVATE_MODE:o}; passwords and tokens shown as ***)" if path in plan.private else ""
        out += [f"# --- write {path}{mode} ---", plan.shown.get(path, text).rstrip("\n"), f"# --- end of {path} ---"]
    for step in plan.steps:
        if isinstance(step, Remove):
            out.append(f"# remove {step.path}")
            continue
        when = []
        if step.probe is not None and step.run_if_loaded is not None:
            when.append(f"only if `{shlex.join(step.probe)}` {'succeeds' if step.run_if_loaded else 'fails'}")
        if step.ok != OK:
            when.append(f"exit {', '.join(map(str, sorted(step.ok - OK)))} means already done")
        if step.probe is not None and step.wait_unloaded:
            when.append(f"then wait until `{shlex.join(step.probe)}` fails")
        out.append(shlex.join(step.argv) + (f"  # {'; '.join(when)}" if when else ""))
    return "\n".join(out + ([""] + plan.notes if plan.notes else []))


Runner = Callable[[list[str]], subprocess.CompletedProcess[str]]


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    # An argument list, never a shell: paths with spaces or quotes stay one argument.
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def execute(plan: Plan, run: Runner = _run, sleep: Callable[[float], None] = time.sleep,
            clock: Callable[[], float] = time.monotonic) -> int:
    """Write the files, then run the steps in order; the first failing exit code, 0 if all went well."""
    for folder in plan.dirs:
        folder.mkdir(parents=True, exist_ok=True)
    for path, text in plan.files.items():
        # Atomic: a service manager never reads a half-written file. A private one is never readable by others.
        write_atomic(path, text, PRIVATE_MODE if path in plan.private else FILE_MODE)
        print(f"wrote {path}")
    code = 0
    for step in plan.steps:
        if isinstance(step, Remove):
            if step.path.exists():
                step.path.unlink()
                print(f"removed {step.path}")
            continue
        if step.probe is not None and step.run_if_loaded is not None:
            if (run(step.probe).returncode == 0) != step.run_if_loaded:
                continue
        print(f"$ {shlex.join(step.argv)}", flush=True)
        result = run(step.argv)
        sys.stdout.write(result.stdout)
        if result.returncode not in step.ok:
            sys.stderr.write(result.stderr)
            if not plan.keep_going:
                print(f"whisper-daemon: `{shlex.join(step.argv)}` failed with exit status {result.returncode}",
                      file=sys.stderr)
                return result.returncode
            code = code or result.returncode
        elif step.probe is not None and step.wait_unloaded:
            deadline = clock() + WAIT_UNLOADED_SECONDS
            while run(step.probe).returncode == 0 and clock() < deadline:
                sleep(0.5)
    if code == 0 and plan.notes:
        print(*plan.notes, sep="\n")
    return code


def add_service_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "service", parents=[common], help="run watcher and worker as login services (launchd / systemd --user)",
        description="Install or control the watcher and worker as LaunchAgents (macOS) or systemd --user "
                    "units (Linux). `install` writes the settings in effect now (flags, environment, config "
                    "file) into the service definitions; the other actions take no settings.")
    parser.add_argument("action", choices=ACTIONS, help="install writes the service files and starts them; "
                        "uninstall stops them and removes the files")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the files and the commands, write and run nothing")


def cmd_service(cfg: Config, args: argparse.Namespace, *, platform: str | None = None, home: Path | None = None,
                uid: int | None = None, python: str | None = None, run: Runner = _run) -> int:
    try:
        todo = plan(args.action, cfg, platform, home, uid, python)
    except UnsupportedPlatform as e:
        print(f"whisper-daemon service: {e}", file=sys.stderr)
        return EXIT_UNSUPPORTED
    except ServiceError as e:
        print(f"whisper-daemon service: {e}", file=sys.stderr)
        return 1
    if args.dry_run:
        print(describe(todo))
        return 0
    try:
        return execute(todo, run)
    except OSError as e:  # no launchctl/systemctl, or an unwritable folder
        print(f"whisper-daemon service: {e}", file=sys.stderr)
        return 1
