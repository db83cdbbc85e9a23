"""Settings, built once at the entry point: defaults, then a TOML file, then env, then CLI flags."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import platformdirs

APP = "whisper-daemon"
ENV_PREFIX = "WHISPER_DAEMON_"
DATA_DIR = Path(platformdirs.user_data_dir(APP))
LOCALE_VARIABLES = ("LC_ALL", "LC_MESSAGES", "LANG")  # POSIX order: the first one set names the user's language
TRADITIONAL_LOCALES = {"tw", "hk", "mo", "hant"}  # Taiwan, Hong Kong, Macau, or the script tag itself
TASKS = ("transcribe", "translate")
CHINESE_SCRIPTS = ("simplified", "traditional", "as-is")  # as-is: the model's own text, untouched
UNSET = ""  # in the environment: an optional setting (or the config file) explicitly left unset
_UNSET_WORDS = {UNSET, "none"}
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}
OBSERVERS = ("auto", "native", "polling")
WEB_PORT = 8470  # the status page's default port; 0 lets the system pick a free one (printed at start)
MIN_TOKEN_CHARS = 12  # a guessable password on a page that serves transcripts is worse than none
POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")  # a `db` that is not a SQLite file


FORMATS = ("srt", "vtt", "txt", "json", "tsv", "rttm")  # the files formats/ writes; each is also its files' suffix
MAX_SPEAKERS = 20  # `auto`'s upper bound: more distinct voices than this in one recording is noise


class ConfigError(Exception):
    """Settings that cannot work; the message says which and what to do."""


@dataclass(frozen=True)
class CueRules:
    """How subtitle cues are cut (formats/cues.py): the cue_* settings, defaults from the style guides."""

    line_chars: int = 42  # Netflix, Latin scripts
    cjk_line_chars: int = 16  # Netflix, Chinese and Japanese
    lines: int = 2
    max_seconds: float = 7.0
    min_seconds: float = 5 / 6  # Netflix: 20 frames at 24 fps
    chars_per_second: float = 20.0  # Netflix's adult reading speed for English
    gap_seconds: float = 2 / 25  # two frames at 25 fps between cues


CUES = CueRules()  # the cue_* settings' defaults


@dataclass(frozen=True)
class Config:
    inbox: Path = DATA_DIR / "inbox"
    outbox: Path = DATA_DIR / "outbox"
    # The queue: a SQLite file, or postgresql://user@host/dbname for a queue several machines share.
    db: str = str(DATA_DIR / "jobs.db")
    model: str = "base"  # multilingual; English-only users can pick tiny.en or base.en
    language: str | None = None  # None: detect per recording
    task: str = "transcribe"  # or "translate": English text from speech in any language (multilingual models)
    prompt: str | None = None  # names, jargon and spellings the model should know; given to it on every window
    chinese_script: str = "simplified"  # simplified | traditional | as-is; load() picks the default from the locale
    formats: tuple[str, ...] = ("srt",)  # the files written for each recording: srt, vtt, txt, json, tsv, rttm
    # Speaker labels: auto (when more than one voice is heard), off, a number ("3") or a range ("2-6").
    speakers: str = "auto"
    # How subtitle cues (srt, vtt) are cut: see CueRules above.
    cue_line_chars: int = CUES.line_chars
    cue_cjk_line_chars: int = CUES.cjk_line_chars
    cue_lines: int = CUES.lines
    cue_max_seconds: float = CUES.max_seconds
    cue_min_seconds: float = CUES.min_seconds
    cue_chars_per_second: float = CUES.chars_per_second
    cue_gap_seconds: float = CUES.gap_seconds
    vad: bool = True  # Silero VAD: the model hears only speech, so it invents nothing over noise and music
    vad_threshold: float = 0.5  # speech probability above which VAD counts a 32 ms frame as speech
    beam_size: int | None = 5  # the CLI's; 2: 0.7x the time, more errors (docs/benchmarks.md: beam width); 1: greedy
    chunk_seconds: float = 30.0  # audio per window and per checkpoint (Whisper's window is 30 s)
    precision: str = "auto"  # auto | fp32 | fp16 | bf16 | int8 (an int8 decoder): the resident weights' number format
    threads: int = 0  # torch threads of a worker process; 0: one per physical core (two processes on one machine: 1 each)
    # Jobs a worker process transcribes at once, sharing its threads and one copy of the model. 2 drained
    # a backlog no faster on 2 cores (docs/benchmarks.md, issue 25 lever 2): measure before you raise it.
    concurrency: int = 1
    batch_size: int = 1  # > 1 decodes chunks cut at quiet points together (slower on 2-core CPUs)
    quiet_seconds: float = 2.0  # a file is complete once its size and mtime hold this long
    rescan_seconds: float = 60.0  # safety net for missed filesystem events
    # auto | native | polling: how the watcher learns of new files. auto polls an inbox on a network
    # mount (NFS, SMB: they send no file events) and uses the system's events elsewhere.
    observer: str = "auto"
    # A busy worker renews its job's lease every few seconds from a heartbeat thread, whatever the job
    # is doing; a job whose worker stopped renewing (it died, its machine went off or was cut off)
    # this long ago is resumed by another worker from its checkpoint. 45 s, with another worker's
    # look every half lease: taken over within about a minute, well inside 2 minutes.
    lease_seconds: float = 45.0
    max_attempts: int = 3
    min_available_mb: float = 1024.0  # pause (model kept) when free memory drops below this
    max_rss_mb: float = 4096.0  # after a job above this, exit so the service manager restarts fresh
    notify: bool = False  # a desktop notification for each transcript ready (osascript, notify-send)
    on_done: str | None = None  # a command (no shell) run with each transcript's file paths appended
    webhook: str | None = None  # an http(s) URL that gets a JSON POST for each transcript ready
    # The status page (`whisper-daemon web`; `web = true` serves it beside `run` and the services too).
    web: bool = False
    host: str = "127.0.0.1"  # loopback only; any other address needs web_token
    port: int = WEB_PORT
    web_actions: bool = False  # retry and re-transcribe buttons; read-only without them
    web_token: str | None = None  # the page's password; required to serve it beyond this machine
    log_dir: Path = Path(platformdirs.user_log_dir(APP))
    cache_dir: Path = Path(platformdirs.user_cache_dir(APP))
    config: Path | None = None  # the TOML file these settings were read from

    def to_env(self, *, masked: bool = False) -> dict[str, str]:
        """Every setting as a WHISPER_DAEMON_* variable, unset ones and the config file included, so a
        child process or a service builds exactly this config whatever the default config.toml says.
        `masked`: as printed for people, the passwords and tokens of SECRET_SETTINGS hidden (masked_url)."""
        env = {ENV_PREFIX + f.name.upper(): _env_value(getattr(self, f.name)) for f in fields(self)}
        if masked:
            for name in SECRET_SETTINGS:
                if "://" in (value := env[ENV_PREFIX + name.upper()]):
                    env[ENV_PREFIX + name.upper()] = masked_url(value)
        return env


# Settings that are URLs and may carry a password (postgresql://user:password@host/db, a webhook's
# https://user:password@host/…) or a token in the query (https://host/hook?token=…).
SECRET_SETTINGS = ("db", "webhook")


def masked_url(url: str) -> str:
    """`url` as printed: the password and the query replaced by ***, as the logs show them."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{host}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query="***" if parts.query else "",
                                                  fragment="***" if parts.fragment else ""))


def _env_value(value: Any) -> str:
    if value is None:
        return UNSET
    return ",".join(value) if isinstance(value, tuple) else str(value)


def cue_rules(cfg: Config) -> CueRules:
    """The cue_* settings as the rules formats/cues.py cuts subtitles by."""
    return CueRules(**{f.name: getattr(cfg, f"cue_{f.name}") for f in fields(CueRules)})


def default_config_file() -> Path:
    """Read when neither --config nor WHISPER_DAEMON_CONFIG names a file, if it exists. Looked up at
    each load (not at import), so it follows HOME and XDG_CONFIG_HOME."""
    return Path(platformdirs.user_config_dir(APP)) / "config.toml"


def _coerce(name: str, hint: Any, raw: Any) -> Any:
    """Turn a TOML/env/CLI value into the field's type, naming the setting when it can't."""
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    target = next(a for a in args if a is not type(None)) if optional else hint
    if isinstance(raw, str) and raw.strip().lower() in _UNSET_WORDS:
        if optional:
            return None
        if raw.strip() == UNSET:
            raise ConfigError(f"setting {name!r} needs a value; leave it out to get the default")
    try:
        if target is Path:
            return Path(os.path.expanduser(str(raw))).absolute()
        if name == "db":
            return database(str(raw))
        if typing.get_origin(target) is tuple:  # a TOML array, or "srt,vtt" in the environment or a flag
            items = raw.split(",") if isinstance(raw, str) else raw
            if not isinstance(items, list | tuple) or not all(isinstance(item, str) for item in items):
                raise ValueError(raw)
            return tuple(item.strip().lower() for item in items if item.strip())
        if target is bool and isinstance(raw, str):  # bool("false") is True
            if raw.strip().lower() not in _TRUE | _FALSE:
                raise ValueError(raw)
            return raw.strip().lower() in _TRUE
        return target(raw)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"setting {name!r}: {raw!r} is not a valid {target.__name__}") from e


# A settings file is a few lines; one far larger is not a settings file (a link to a huge file).
SETTINGS_FILE_MAX_BYTES = 1 << 20


def read_toml_file(path: Path) -> dict[str, Any]:
    """A TOML settings file, read only if it is a regular file of at most SETTINGS_FILE_MAX_BYTES: a
    FIFO (opened without waiting for a writer), a device such as /dev/zero, or a folder is refused
    with ValueError instead of hanging or filling the memory. OSError and TOMLDecodeError as they come."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: opening a FIFO does not wait
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("it is not a regular file (a pipe, a device or a folder)")
        data = os.read(fd, SETTINGS_FILE_MAX_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > SETTINGS_FILE_MAX_BYTES:
        raise ValueError(f"it is larger than {SETTINGS_FILE_MAX_BYTES >> 20} MB, which no settings file is")
    return tomllib.loads(data.decode("utf-8"))


def _read_toml(path: Path, names: set[str]) -> dict[str, Any]:
    try:
        from_file = read_toml_file(path)
    except FileNotFoundError as e:
        raise ConfigError(f"config file {path} does not exist") from e
    except (OSError, ValueError) as e:  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
        raise ConfigError(f"config file {path} cannot be read: {e}") from e
    unknown = set(from_file) - names
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s) {sorted(unknown)}; known: {sorted(names)}")
    return from_file


def load(cli: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Merge the layers; `cli` holds only the flags the user actually gave."""
    env = os.environ if env is None else env
    hints = typing.get_type_hints(Config)
    names = {f.name for f in fields(Config)}
    given = {name: env[ENV_PREFIX + name.upper()] for name in names if ENV_PREFIX + name.upper() in env}
    given.update({k: v for k, v in (cli or {}).items() if k in names and v is not None})  # flags beat env

    if "config" in given:  # named (or explicitly none): a named file must exist
        path = _coerce("config", hints["config"], given.pop("config"))
    else:
        path = default_config_file() if default_config_file().is_file() else None
    layered = {**(_read_toml(path, names - {"config"}) if path else {}), **given}
    layered.setdefault("chinese_script", default_chinese_script(env))
    cfg = Config(config=path, **{k: _coerce(k, hints[k], v) for k, v in layered.items() if k != "config"})
    validate(cfg)
    return cfg


def is_postgres(db: str | Path) -> bool:
    return str(db).startswith(POSTGRES_SCHEMES)


def database(raw: str) -> str:
    """A PostgreSQL URL as given; a SQLite path (or sqlite:///path) as an absolute path."""
    if is_postgres(raw):
        return raw
    if raw.startswith("sqlite:"):
        if not raw.startswith("sqlite:///"):
            raise ConfigError(f"db {raw!r}: a SQLite URL is sqlite:///relative/path or sqlite:////absolute/path")
        raw = raw.removeprefix("sqlite:///")
    elif "://" in raw:
        raise ConfigError(f"db {raw!r}: give a file path for SQLite, or postgresql://user@host/dbname")
    return str(Path(os.path.expanduser(raw)).absolute())


def default_chinese_script(env: Mapping[str, str]) -> str:
    """Traditional for a Chinese locale of Taiwan, Hong Kong or Macau (zh_TW.UTF-8, zh_HK, zh-Hant),
    simplified for any other."""
    locale = next((env[name] for name in LOCALE_VARIABLES if env.get(name)), "")
    language, *rest = re.split(r"[_.@-]", locale.lower())
    if language == "zh" and "hans" not in rest and TRADITIONAL_LOCALES & set(rest):
        return "traditional"
    return "simplified"


def speaker_bounds(speakers: str) -> tuple[int, int] | None:
    """The least and the most speakers a `speakers` setting allows; None for off."""
    value = speakers.strip().lower()
    if value == "off":
        return None
    if value == "auto":
        return 1, MAX_SPEAKERS
    match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", value)
    low, high = (int(match[1]), int(match[2] or match[1])) if match else (0, 0)
    if not 1 <= low <= high <= MAX_SPEAKERS:
        raise ConfigError(f"speakers is {speakers!r}: choose auto (labels when more than one voice is heard), off, "
                          f"a number of speakers such as 3, or a range such as 2-6 (at most {MAX_SPEAKERS})")
    return low, high


def check_task_and_script(task: str, chinese_script: str) -> None:
    """The two choices a folder's settings file may also make (folders.py)."""
    if task not in TASKS:
        raise ConfigError(f"task is {task!r}: choose transcribe, or translate (into English)")
    if chinese_script not in CHINESE_SCRIPTS:
        raise ConfigError(f"chinese_script is {chinese_script!r}: choose {', '.join(CHINESE_SCRIPTS)}")


def validate(cfg: Config) -> None:
    inbox, outbox = cfg.inbox.resolve(), cfg.outbox.resolve()
    if outbox == inbox or outbox.is_relative_to(inbox):
        raise ConfigError(
            f"the outbox {cfg.outbox} is inside the inbox {cfg.inbox}: transcripts would be watched "
            "as new input. Choose an outbox folder outside the inbox."
        )
    if cfg.quiet_seconds < 0 or cfg.max_attempts < 1:
        raise ConfigError("quiet_seconds must be >= 0 and max_attempts >= 1")
    if cfg.observer not in OBSERVERS:
        raise ConfigError(f"observer is {cfg.observer!r}: choose {', '.join(OBSERVERS)} (polling for an inbox on a "
                          "network share, which sends no file events; auto finds out)")
    if cfg.lease_seconds < 10:
        raise ConfigError(f"lease_seconds is {cfg.lease_seconds}: give at least 10 (default 45); a worker renews "
                          "its lease every quarter of it, and a busy database can delay that by seconds")
    if cfg.precision not in ("auto", "fp32", "fp16", "bf16", "int8"):
        raise ConfigError(f"precision is {cfg.precision!r}: choose auto, fp32, fp16, bf16 or int8")
    if cfg.threads < 0:
        raise ConfigError(f"threads is {cfg.threads}: give the number of torch threads, or 0 for one per physical core")
    if cfg.concurrency < 1:
        raise ConfigError(f"concurrency is {cfg.concurrency}: give how many jobs a worker transcribes at once (1 or "
                          "more)")
    if cfg.batch_size < 1:
        raise ConfigError("batch_size must be at least 1")
    check_task_and_script(cfg.task, cfg.chinese_script)
    speaker_bounds(cfg.speakers)
    if not 0 < cfg.vad_threshold < 1:
        raise ConfigError(f"vad_threshold is {cfg.vad_threshold}: it is a probability, between 0 and 1 "
                          "(0.5 by default; lower keeps more quiet speech, higher drops more noise)")
    if not 1 <= cfg.chunk_seconds <= 30:
        raise ConfigError(f"chunk_seconds is {cfg.chunk_seconds}: it must be between 1 and 30 (Whisper's window)")
    if abs(cfg.chunk_seconds * FRAMES_PER_SECOND - round(cfg.chunk_seconds * FRAMES_PER_SECOND)) > 1e-6:
        raise ConfigError(f"chunk_seconds is {cfg.chunk_seconds}: give a whole number of hundredths of a second (e.g. "
                          f"{round(cfg.chunk_seconds, 2):g}): windows and checkpoints fall on the 10 ms frames the "
                          "speech detection and the model work in")
    if not 0 <= cfg.port <= 65535:
        raise ConfigError(f"port is {cfg.port}: give a TCP port, 1 to 65535 (0: any free one; default {WEB_PORT})")
    if cfg.web_token is not None and len(cfg.web_token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"web_token has {len(cfg.web_token)} characters: give at least {MIN_TOKEN_CHARS} (e.g. the "
                          "output of `python3 -c 'import secrets; print(secrets.token_urlsafe())'`)")
    check_formats(cfg.formats)
    check_cues(cfg)
    check_delivery(cfg)


def check_delivery(cfg: Config) -> None:
    """The on_done command can be run, and the webhook is an http(s) URL (delivery.py)."""
    if cfg.on_done is not None:
        try:
            program = (shlex.split(cfg.on_done) or [""])[0]
        except ValueError as e:
            raise ConfigError(f"on_done {cfg.on_done!r} cannot be split into a command and its arguments ({e}): "
                              "check its quotes") from e
        if os.sep in program and not os.path.isabs(program):  # it runs in the transcript's folder
            raise ConfigError(f"on_done: {program!r} is a relative path: give the program's absolute path")
        if shutil.which(program) is None:
            raise ConfigError(f"on_done: {program!r} is neither an executable file nor a command on PATH: give its "
                              "absolute path, or make it executable (chmod +x)")
    if cfg.webhook is not None:
        try:
            url = urllib.parse.urlsplit(cfg.webhook)
            port = url.port  # ValueError for one that is not a number up to 65535
        except ValueError as e:
            raise ConfigError(f"webhook is not a URL ({e}): give one like https://example.com/hook") from e
        if url.scheme not in ("http", "https") or not url.hostname or port == 0:  # not shown: it may hold a password
            raise ConfigError(f"webhook must be an http:// or https:// URL with a host, like https://example.com/hook "
                              f"(this one has scheme {url.scheme!r}, host {url.hostname!r}, port {port}), or be left "
                              "unset")


FRAMES_PER_SECOND = 100  # Whisper's mel frames and the VAD's decisions are 10 ms apart


def check_formats(formats: tuple[str, ...]) -> None:
    choices = f"choose one or more of {', '.join(FORMATS)}, e.g. formats = [\"srt\", \"txt\"] (\"srt,txt\" in a flag)"
    if not formats:
        raise ConfigError(f"formats is empty: {choices}")
    for fmt in formats:
        if fmt not in FORMATS:
            raise ConfigError(f"formats: {fmt!r} is not a format whisper-daemon writes: {choices}")
        if formats.count(fmt) > 1:
            raise ConfigError(f"formats names {fmt!r} twice: name each format once")


def check_cues(cfg: Config) -> None:
    for f in fields(CueRules):
        if (value := getattr(cfg, f"cue_{f.name}")) <= 0:
            raise ConfigError(f"cue_{f.name} is {value}: it must be more than 0 (default {getattr(CUES, f.name)})")
    if cfg.cue_min_seconds > cfg.cue_max_seconds:
        raise ConfigError(f"cue_min_seconds ({cfg.cue_min_seconds}) is longer than cue_max_seconds "
                          f"({cfg.cue_max_seconds}): a cue cannot be both; lower the first or raise the second")
