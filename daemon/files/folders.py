"""Per-folder settings: a `whisper-daemon.toml` in a folder of the inbox applies to the recordings
in it and in its sub-folders (no torch here: the watcher reads them).

People keep one folder per language or per client:

    inbox/
      interviews-zh/whisper-daemon.toml   language = "zh"
      clients/acme/whisper-daemon.toml    prompt = "Acme, Kubernetes, Jira"
      memos/whisper-daemon.toml           speakers = "off"

A nearer folder's file overrides a farther one's, key by key; the daemon's own settings fill in
the rest when a worker starts the job. A job stores what it was queued with.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from daemon.config import CHINESE_SCRIPTS, TASKS, ConfigError, check_task_and_script, read_toml_file, speaker_bounds

SETTINGS_FILE = "whisper-daemon.toml"
# What a folder may set: how its recordings are transcribed, not where or by which model.
KEYS = ("language", "prompt", "chinese_script", "task", "speakers")


class SettingsError(Exception):
    """A folder's settings file cannot be used; the message says which file and what to change."""


def settings_for(path: Path, inbox: Path) -> dict[str, str]:
    """The settings the folders between `inbox` and `path` give it, nearest last; {} for a file
    outside the inbox (named on the command line)."""
    inbox, folder = inbox.resolve(), path.parent.resolve()
    if not folder.is_relative_to(inbox):
        return {}
    chain = [folder, *folder.parents]
    merged: dict[str, str] = {}
    for directory in reversed(chain[: chain.index(inbox) + 1]):
        merged.update(read(directory / SETTINGS_FILE))
    return merged


def read(file: Path) -> dict[str, str]:
    """One settings file, checked; {} if there is none."""
    try:
        data = read_toml_file(file)  # only a regular file: a FIFO or a link to /dev/zero must not stall the watcher
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
        raise SettingsError(f"{file}: cannot read it ({e}); fix the file, then "
                            "`whisper-daemon retry --failed`") from e
    return check(data, str(file))


def check(data: Mapping[str, object], where: str) -> dict[str, str]:
    """Folder settings as strings, or SettingsError naming `where` and the setting to fix."""
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise SettingsError(f"{where}: {', '.join(unknown)} cannot be set per folder (a folder sets "
                            f"{', '.join(KEYS)}); fix the file, then `whisper-daemon retry --failed`")
    for key, value in data.items():
        if not isinstance(value, str):
            raise SettingsError(f"{where}: {key} must be text in quotes, e.g. {key} = \"...\"")
    try:
        check_task_and_script(str(data.get("task", TASKS[0])), str(data.get("chinese_script", CHINESE_SCRIPTS[0])))
        speaker_bounds(str(data.get("speakers", "auto")))
    except ConfigError as e:
        raise SettingsError(f"{where}: {e}") from e
    return {key: str(value) for key, value in data.items()}


def dumps(settings: Mapping[str, str | None]) -> str:
    """The stored form: JSON with sorted keys, so equal settings are equal text."""
    return json.dumps(dict(settings), sort_keys=True, ensure_ascii=False)
