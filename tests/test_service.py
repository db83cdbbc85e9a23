"""`service`: LaunchAgent plists, systemd units and the exact commands, all without running any."""

from __future__ import annotations

import argparse
import plistlib
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from daemon import config
from daemon.config import Config, load
from daemon.processes.service import (
    ACTIONS,
    EXIT_UNSUPPORTED,
    Plan,
    Remove,
    ServiceError,
    Step,
    add_service_parser,
    cmd_service,
    execute,
    plan,
)
from daemon.processes.supervisor import EXIT_CONFIG, EXIT_TEMPFAIL, RESTART_MIN_SECONDS, Supervisor, _Child

UID = 501
PYTHON = "/opt/whisper daemon/.venv/bin/python"  # a space, to prove nothing goes through a shell
WATCHER, WORKER = "io.github.whisper-daemon.watcher", "io.github.whisper-daemon.worker"
UNITS = ["whisper-daemon-watcher.service", "whisper-daemon-worker.service"]


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return Config(inbox=tmp_path / "Transcribe" / "inbox", outbox=tmp_path / "Transcribe" / "out & <box>",
                  db=tmp_path / "state" / "jobs.db", model="tiny.en", log_dir=tmp_path / "logs",
                  cache_dir=tmp_path / "cache")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def launchd(action: str, cfg: Config, home: Path) -> Plan:
    return plan(action, cfg, platform="darwin", home=home, uid=UID, python=PYTHON)


def systemd(action: str, cfg: Config, home: Path) -> Plan:
    return plan(action, cfg, platform="linux", home=home, uid=UID, python=PYTHON)


def agent(home: Path, label: str) -> Path:
    return home / "Library" / "LaunchAgents" / f"{label}.plist"


def unit(home: Path, name: str) -> Path:
    return home / ".config" / "systemd" / "user" / name


def settings_file(home: Path) -> Path:
    """The systemd units' EnvironmentFile."""
    return home / ".config" / "whisper-daemon" / "service.env"


# ---------------------------------------------------------------- plists

@pytest.mark.parametrize(("label", "command", "process_type"),
                         [(WATCHER, "watch", "Background"), (WORKER, "work", "Standard")])
def test_plist_has_every_key_with_the_right_type(cfg: Config, home: Path, label: str, command: str,
                                                 process_type: str) -> None:
    files = launchd("install", cfg, home).files
    data = plistlib.loads(files[agent(home, label)].encode())

    assert data["Label"] == label
    args = data["ProgramArguments"]
    assert isinstance(args, list) and all(isinstance(a, str) for a in args)
    assert args == [PYTHON, "-m", "daemon", command]  # the interpreter itself: no sh -c wrapper
    assert Path(args[0]).is_absolute()
    assert data["RunAtLoad"] is True
    assert data["KeepAlive"] == {"SuccessfulExit": False}
    assert type(data["KeepAlive"]["SuccessfulExit"]) is bool
    for key in ("ThrottleInterval", "ExitTimeOut"):
        assert type(data[key]) is int
    assert data["ThrottleInterval"] > 0
    assert data["ExitTimeOut"] >= 20
    assert data["ProcessType"] == process_type
    assert data["LowPriorityIO"] is True
    if command == "work":
        assert type(data["Nice"]) is int and data["Nice"] > 0
    else:
        assert "Nice" not in data
    assert isinstance(data["WorkingDirectory"], str) and Path(data["WorkingDirectory"]).is_absolute()

    env = data["EnvironmentVariables"]
    assert isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    assert cfg.to_env().items() <= env.items()
    assert env["PATH"].split(":")[0] == str(Path(PYTHON).parent)

    logs = home / "Library" / "Logs" / "whisper-daemon"
    name = "watcher" if command == "watch" else "worker"
    assert data["StandardOutPath"] == str(logs / f"{name}.out.log")
    assert data["StandardErrorPath"] == str(logs / f"{name}.err.log")
    assert "@" not in files[agent(home, label)]  # every placeholder was substituted


def test_plist_values_are_xml_escaped(cfg: Config, home: Path) -> None:
    text = launchd("install", cfg, home).files[agent(home, WORKER)]
    assert "out &amp; &lt;box&gt;" in text
    assert plistlib.loads(text.encode())["EnvironmentVariables"]["WHISPER_DAEMON_OUTBOX"] == str(cfg.outbox)


def test_install_creates_the_log_folder_launchd_needs(cfg: Config, home: Path) -> None:
    assert home / "Library" / "Logs" / "whisper-daemon" in launchd("install", cfg, home).dirs


# ---------------------------------------------------------------- launchctl commands

@pytest.mark.parametrize(("action", "expected"), [
    ("install", [["launchctl", "bootout", f"gui/{UID}/{WATCHER}"],
                 ["launchctl", "bootout", f"gui/{UID}/{WORKER}"],
                 ["launchctl", "bootstrap", f"gui/{UID}", "{watcher_plist}"],
                 ["launchctl", "bootstrap", f"gui/{UID}", "{worker_plist}"]]),
    ("uninstall", [["launchctl", "bootout", f"gui/{UID}/{WATCHER}"],
                   ["launchctl", "bootout", f"gui/{UID}/{WORKER}"]]),
    ("start", [["launchctl", "kickstart", f"gui/{UID}/{WATCHER}"],
               ["launchctl", "bootstrap", f"gui/{UID}", "{watcher_plist}"],
               ["launchctl", "kickstart", f"gui/{UID}/{WORKER}"],
               ["launchctl", "bootstrap", f"gui/{UID}", "{worker_plist}"]]),
    ("stop", [["launchctl", "bootout", f"gui/{UID}/{WATCHER}"],
              ["launchctl", "bootout", f"gui/{UID}/{WORKER}"]]),
    ("restart", [["launchctl", "kickstart", "-k", f"gui/{UID}/{WATCHER}"],
                 ["launchctl", "kickstart", "-k", f"gui/{UID}/{WORKER}"]]),
    ("status", [["launchctl", "print", f"gui/{UID}/{WATCHER}"],
                ["launchctl", "print", f"gui/{UID}/{WORKER}"]]),
])
def test_launchctl_commands(cfg: Config, home: Path, action: str, expected: list[list[str]]) -> None:
    paths = {"{watcher_plist}": str(agent(home, WATCHER)), "{worker_plist}": str(agent(home, WORKER))}
    expected = [[paths.get(arg, arg) for arg in argv] for argv in expected]
    assert launchd(action, cfg, home).commands == expected


def test_launchd_start_bootstraps_only_when_not_loaded(cfg: Config, home: Path) -> None:
    steps = launchd("start", cfg, home).steps
    for label, (kickstart, bootstrap) in zip([WATCHER, WORKER], zip(steps[::2], steps[1::2])):
        assert isinstance(kickstart, Step) and isinstance(bootstrap, Step)
        assert kickstart.probe == bootstrap.probe == ["launchctl", "print", f"gui/{UID}/{label}"]
        assert (kickstart.run_if_loaded, bootstrap.run_if_loaded) == (True, False)


def test_launchd_uninstall_removes_the_plists_after_bootout(cfg: Config, home: Path) -> None:
    steps = launchd("uninstall", cfg, home).steps
    assert steps[2:] == [Remove(agent(home, WATCHER)), Remove(agent(home, WORKER))]
    assert all(isinstance(s, Step) and {3, 113} <= s.ok for s in steps[:2])  # "not loaded" is fine


@pytest.mark.parametrize("action", ACTIONS)
def test_never_the_deprecated_load_or_unload(cfg: Config, home: Path, action: str) -> None:
    for argv in launchd(action, cfg, home).commands:
        assert "load" not in argv and "unload" not in argv


# ---------------------------------------------------------------- systemd units and commands

def test_systemd_units(cfg: Config, home: Path) -> None:
    files = systemd("install", cfg, home).files
    assert set(files) == {unit(home, name) for name in UNITS} | {settings_file(home)}
    for name, command in zip(UNITS, ["watch", "work"]):
        text = files[unit(home, name)]
        lines = text.splitlines()
        exec_start = next(line for line in lines if line.startswith("ExecStart="))
        args = shlex.split(exec_start.removeprefix("ExecStart="))  # same quoting as systemd for these
        assert args == [PYTHON, "-m", "daemon", command] and Path(args[0]).is_absolute()
        for line in ["Restart=on-failure", "RestartSec=10", "TimeoutStopSec=20", "KillSignal=SIGTERM",
                     "KillMode=mixed", f"RestartPreventExitStatus={EXIT_CONFIG}", "WantedBy=default.target"]:
            assert line in lines
        assert ("Nice=10" in lines and "IOSchedulingClass=idle" in lines) == (command == "work")
        assert _unit_env(text, files) == {**cfg.to_env(), "PATH": _unit_env(text, files)["PATH"]}
        assert any(line.startswith('Environment="PATH=') for line in lines)


def test_systemd_quoting(tmp_path: Path, home: Path) -> None:
    inbox = tmp_path / 'in "100%" \\ $HOME `id`'
    files = systemd("install", Config(inbox=inbox, outbox=tmp_path / "out"), home).files
    # In the environment file: quotes, backslashes, $ and ` escaped, % as it is (no specifiers there).
    assert f'WHISPER_DAEMON_INBOX="{tmp_path}/in \\"100%\\" \\\\ \\$HOME \\`id\\`"' in files[settings_file(home)].splitlines()
    assert _unit_env(files[unit(home, UNITS[0])], files)["WHISPER_DAEMON_INBOX"] == str(inbox)
    with pytest.raises(ServiceError, match="control character"):
        systemd("install", Config(inbox=tmp_path / "a\nb"), home)


@pytest.mark.parametrize(("action", "expected"), [
    ("install", [["systemctl", "--user", "daemon-reload"], ["systemctl", "--user", "stop", *UNITS],
                 ["systemctl", "--user", "enable", "--now", *UNITS]]),
    ("uninstall", [["systemctl", "--user", "disable", "--now", *UNITS], ["systemctl", "--user", "daemon-reload"]]),
    ("start", [["systemctl", "--user", "start", *UNITS]]),
    ("stop", [["systemctl", "--user", "stop", *UNITS]]),
    ("restart", [["systemctl", "--user", "restart", *UNITS]]),
    ("status", [["systemctl", "--user", "status", "--no-pager", *UNITS]]),
])
def test_systemctl_commands(cfg: Config, home: Path, action: str, expected: list[list[str]]) -> None:
    assert systemd(action, cfg, home).commands == expected


def test_systemd_install_mentions_linger(cfg: Config, home: Path) -> None:
    assert any("loginctl enable-linger $USER" in note for note in systemd("install", cfg, home).notes)


def _unit_env(text: str, files: dict[Path, str]) -> dict[str, str]:
    """A unit's environment: its EnvironmentFile (one of `files`), then its Environment= lines, unquoted
    the way systemd reads them (an environment file's double quotes as POSIX shell's: a backslash
    keeps the next character when it is one of \\ " $ `)."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("EnvironmentFile="):
            for assignment in files[Path(line.removeprefix("EnvironmentFile=").replace("%%", "%"))].splitlines():
                if assignment and not assignment.startswith("#"):
                    key, quoted = assignment.split("=", 1)
                    assert quoted[0] == quoted[-1] == '"'
                    env[key] = re.sub(r'\\([\\"$`])', r"\1", quoted[1:-1])
        elif line.startswith("Environment="):
            key, value = shlex.split(line.removeprefix("Environment="))[0].replace("%%", "%").split("=", 1)
            env[key] = value
    return env


def test_services_get_exactly_the_settings_of_install(tmp_path: Path, home: Path) -> None:
    """What `service install --config chosen.toml` wrote builds the same config in the services,
    even where the default config.toml disagrees, and names the file it came from."""
    default = config.default_config_file()
    default.parent.mkdir(parents=True)
    default.write_text('language = "de"\nmodel = "small"\nbeam_size = 5\n')
    chosen = tmp_path / "chosen.toml"
    chosen.write_text('model = "tiny.en"\nbeam_size = "none"\n')
    cfg = load({"config": str(chosen), "inbox": str(tmp_path / "in"), "outbox": str(tmp_path / "out")}, env={})
    files = systemd("install", cfg, home).files
    units = [_unit_env(files[unit(home, name)], files) for name in UNITS]
    agents = [plistlib.loads(text.encode())["EnvironmentVariables"]
              for text in launchd("install", cfg, home).files.values()]
    for env in units + agents:
        assert env["WHISPER_DAEMON_CONFIG"] == str(chosen)
        service = load({}, env=env)
        assert service == cfg and (service.language, service.beam_size, service.config) == (None, None, chosen)


def test_install_with_a_shared_queue_hands_its_url_to_both_services(tmp_path: Path, home: Path) -> None:
    """`service install --db postgresql://…` (README, Several machines): both services get the URL as
    given, and nothing takes it for a path."""
    url = "postgresql://transcriber@nas.local/transcripts"
    cfg = load({"db": url, "inbox": str(tmp_path / "in"), "outbox": str(tmp_path / "out")}, env={})
    files = systemd("install", cfg, home).files
    units = [_unit_env(files[unit(home, name)], files) for name in UNITS]
    agents = [plistlib.loads(text.encode())["EnvironmentVariables"]
              for text in launchd("install", cfg, home).files.values()]
    assert len(units + agents) == 4
    for env in units + agents:
        assert env["WHISPER_DAEMON_DB"] == url and load({}, env=env).db == url


def test_exit_code_policy(cfg: Config, home: Path) -> None:
    """Exit 0 is a clean stop (left alone); non-zero is a crash (restarted); 78 is a config error."""
    for text in launchd("install", cfg, home).files.values():
        assert plistlib.loads(text.encode())["KeepAlive"] == {"SuccessfulExit": False}
    files = systemd("install", cfg, home).files
    for name in UNITS:
        lines = files[unit(home, name)].splitlines()
        assert "Restart=on-failure" in lines and "RestartPreventExitStatus=78" in lines
    assert EXIT_CONFIG == 78


def test_run_restarts_a_child_that_exits_75_and_stops_on_78() -> None:
    """`run` is a service manager too: 75 (start me again later) is restarted with the backoff,
    78 (bad configuration) stops it. The children here are real processes exiting with those codes."""
    supervisor = Supervisor(Config(), threading.Event())
    child = _Child("work")
    for attempt in range(2):
        child.proc = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({EXIT_TEMPFAIL})"])
        child.started = time.monotonic()  # as Supervisor._start records it: a short life keeps the backoff
        child.proc.wait(timeout=60)
        before = time.monotonic()
        assert supervisor._check(child) is None and child.proc is None
        assert child.restart_at >= before + RESTART_MIN_SECONDS * 2 ** attempt  # backing off
    child.proc = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({EXIT_CONFIG})"])
    child.proc.wait(timeout=60)
    assert supervisor._check(child) == EXIT_CONFIG


# ---------------------------------------------------------------- the command line

@pytest.mark.parametrize("platform", ["darwin", "linux"])
@pytest.mark.parametrize("action", ACTIONS)
def test_dry_run_prints_everything_and_writes_nothing(cfg: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      platform: str, action: str) -> None:
    home = tmp_path / "home"
    home.mkdir()

    def no_run(argv: list[str]) -> subprocess.CompletedProcess[str]:
        raise AssertionError(f"dry run ran {argv}")

    args = argparse.Namespace(action=action, dry_run=True)
    assert cmd_service(cfg, args, platform=platform, home=home, uid=UID, python=PYTHON, run=no_run) == 0

    out = capsys.readouterr().out
    expected = plan(action, cfg, platform=platform, home=home, uid=UID, python=PYTHON)
    for path, text in expected.files.items():
        assert str(path) in out and expected.shown.get(path, text).rstrip("\n") in out
    out_lines = out.splitlines()
    for argv in expected.commands:
        assert any(line.split("  #")[0] == shlex.join(argv) for line in out_lines)
    assert list(home.iterdir()) == []  # nothing written under home
    assert not cfg.inbox.exists()


def test_unsupported_platform(cfg: Config, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(action="install", dry_run=True)
    assert cmd_service(cfg, args, platform="win32", home=home, uid=UID, python=PYTHON) == EXIT_UNSUPPORTED
    assert "macOS" in capsys.readouterr().err


def test_parser() -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--inbox")
    parser = argparse.ArgumentParser()
    add_service_parser(parser.add_subparsers(dest="command"), common)
    args = parser.parse_args(["service", "install", "--dry-run", "--inbox", "x"])
    assert (args.command, args.action, args.dry_run, args.inbox) == ("service", "install", True, "x")
    assert parser.parse_args(["service", "status"]).dry_run is False
    with pytest.raises(SystemExit):
        parser.parse_args(["service", "load"])


# ---------------------------------------------------------------- execution, with a fake launchctl/systemctl

class FakeManager:
    """Records commands; `loaded` answers `launchctl print`, `codes` gives other commands' exit codes."""

    def __init__(self, loaded: set[str] | None = None, codes: dict[str, int] | None = None) -> None:
        self.loaded, self.codes, self.ran = loaded or set(), codes or {}, []

    def __call__(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        self.ran.append(argv)
        if argv[:2] == ["launchctl", "print"]:
            return subprocess.CompletedProcess(argv, 0 if argv[2] in self.loaded else 113, "", "")
        if argv[:2] == ["launchctl", "bootout"]:
            code = 0 if argv[2] in self.loaded else 3
            self.loaded.discard(argv[2])
            return subprocess.CompletedProcess(argv, code, "", "Boot-out failed: 3: No such process\n")
        return subprocess.CompletedProcess(argv, self.codes.get(argv[1], 0), "", "boom\n")


def test_install_and_uninstall_on_linux(cfg: Config, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeManager()
    install = systemd("install", cfg, home)
    assert execute(install, fake) == 0
    assert fake.ran == install.commands
    for path, text in install.files.items():
        assert path.read_text() == text
    assert "loginctl enable-linger" in capsys.readouterr().out

    assert execute(systemd("uninstall", cfg, home), FakeManager()) == 0
    assert not any(unit(home, name).exists() for name in UNITS) and not settings_file(home).exists()


SECRETS = ("s3cret-pw", "hook-pw", "tok123")


@pytest.mark.parametrize("platform", ["darwin", "linux"])
def test_secrets_are_in_files_only_you_can_read_and_masked_when_printed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], platform: str) -> None:
    """Issue 22, point 7: the queue's password and the webhook's password and token go only into
    files of mode 0600 (the plists; systemd's EnvironmentFile, which the world-readable units name),
    and the services still get them whole. --dry-run and `install` print them as ***."""
    home = tmp_path / "home"
    cfg = Config(inbox=tmp_path / "in", outbox=tmp_path / "out", db="postgresql://transcriber:s3cret-pw@nas.local/q",
                 webhook="https://hook:hook-pw@example.com/hook?token=tok123", log_dir=tmp_path / "logs")
    args = argparse.Namespace(action="install", dry_run=True)
    assert cmd_service(cfg, args, platform=platform, home=home, uid=UID, python=PYTHON) == 0
    printed = capsys.readouterr().out
    assert "postgresql://transcriber:***@nas.local/q" in printed
    assert "https://hook:***@example.com/hook?***" in printed
    assert not any(secret in printed for secret in SECRETS)

    args.dry_run = False
    assert cmd_service(cfg, args, platform=platform, home=home, uid=UID, python=PYTHON, run=FakeManager()) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and not any(secret in printed for secret in SECRETS)
    written = {path: path.read_text() for path in home.rglob("*") if path.is_file()}
    holding = {path for path, text in written.items() if any(secret in text for secret in SECRETS)}
    assert holding and all(path.stat().st_mode & 0o777 == 0o600 for path in holding)
    if platform == "darwin":
        agents = [plistlib.loads(path.read_bytes()) for path in written if path.suffix == ".plist"]
        assert len(agents) == 2 and holding == {path for path in written if path.suffix == ".plist"}
        envs = [data["EnvironmentVariables"] for data in agents]
    else:
        assert holding == {settings_file(home)}
        envs = [_unit_env(written[unit(home, name)], written) for name in UNITS]
    for env in envs:
        assert (env["WHISPER_DAEMON_DB"], env["WHISPER_DAEMON_WEBHOOK"]) == (cfg.db, cfg.webhook)


def test_launchd_uninstall_when_not_loaded_still_removes_the_files(cfg: Config, home: Path) -> None:
    assert execute(launchd("install", cfg, home), FakeManager(), sleep=lambda s: None) == 0
    assert agent(home, WATCHER).exists() and (home / "Library" / "Logs" / "whisper-daemon").is_dir()
    assert execute(launchd("uninstall", cfg, home), FakeManager()) == 0  # bootout exits 3: fine
    assert not agent(home, WATCHER).exists() and not agent(home, WORKER).exists()


def test_launchd_start_kickstarts_loaded_and_bootstraps_the_rest(cfg: Config, home: Path) -> None:
    fake = FakeManager(loaded={f"gui/{UID}/{WATCHER}"})
    assert execute(launchd("start", cfg, home), fake) == 0
    acted = [argv for argv in fake.ran if argv[1] != "print"]
    assert acted == [["launchctl", "kickstart", f"gui/{UID}/{WATCHER}"],
                     ["launchctl", "bootstrap", f"gui/{UID}", str(agent(home, WORKER))]]


def test_bootout_waits_until_the_job_is_gone(cfg: Config, home: Path) -> None:
    target = f"gui/{UID}/{WORKER}"
    prints = iter([0, 0, 113])  # launchd still stopping the job twice, then gone

    def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
        code = next(prints) if argv[1] == "print" and argv[2] == target else 0 if argv[1] != "print" else 113
        return subprocess.CompletedProcess(argv, code, "", "")

    sleeps: list[float] = []
    assert execute(launchd("stop", cfg, home), run, sleep=sleeps.append) == 0
    assert len(sleeps) == 2


def test_a_failing_command_stops_the_plan(cfg: Config, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeManager(codes={"--user": 1})
    assert execute(systemd("install", cfg, home), fake) == 1
    assert fake.ran == [["systemctl", "--user", "daemon-reload"]]
    assert "failed with exit status 1" in capsys.readouterr().err
