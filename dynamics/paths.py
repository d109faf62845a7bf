"""Paths the system cannot take: checked before anything is read or written, so they fail as one usage error.

A path with a name longer than the file system allows (``NAME_MAX``, 255 bytes on most), or longer as a
whole than ``PATH_MAX`` (4096 bytes on Linux), a NUL character or characters the file system's encoding
cannot hold makes every system call on it fail (``ENAMETOOLONG``, ``ValueError``); :func:`check_path`
refuses it up front with a :class:`~dynamics.errors.ConfigError` naming the parameter.
"""

from __future__ import annotations

import os
from pathlib import Path

from dynamics.errors import ConfigError

DEFAULT_NAME_MAX = 255
DEFAULT_PATH_MAX = 4096


def _shown(text: str, limit: int = 48) -> str:
    """``text`` quoted, shortened to ``limit`` characters with an ellipsis in the middle."""
    if len(text) > limit:
        text = text[: limit // 2] + "..." + text[-limit // 2 :]
    return repr(text)


def _system_limit(path: str, name: str, default: int) -> int:
    """``os.pathconf`` of the nearest existing folder above ``path`` (``default`` where it cannot be asked)."""
    folder = os.path.dirname(path)
    while True:
        try:
            if os.path.isdir(folder):
                value = os.pathconf(folder, name)
                return value if value and value > 0 else default
        except (OSError, ValueError):
            return default
        parent = os.path.dirname(folder)
        if parent == folder:
            return default
        folder = parent


def path_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot name a file or folder on this system, or None when it can (it need not exist)."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text:
        return "is empty"
    if "\0" in text:
        return f"{_shown(text)} contains a NUL character"
    try:
        absolute = os.fsencode(os.path.abspath(text))
    except (UnicodeEncodeError, OSError, ValueError):
        return f"{_shown(text)} holds characters the file system's encoding cannot store"
    path_max = DEFAULT_PATH_MAX
    if len(absolute) >= path_max:
        return f"{_shown(text)} is {len(absolute)} bytes long as an absolute path; the system allows {path_max - 1}"
    name_max = _system_limit(os.fsdecode(absolute), "PC_NAME_MAX", DEFAULT_NAME_MAX)
    for part in Path(text).parts:
        size = len(os.fsencode(part))
        if size > name_max and part != os.sep:
            return f"{_shown(text)} has a name of {size} bytes ({_shown(part, 24)}); the file system allows {name_max}"
    return None


def check_path(path: str | os.PathLike[str], key: str, fix: str | None = None) -> Path:
    """``path`` as a Path; ConfigError (``key``) naming the problem when the system cannot use it."""
    problem = path_problem(path)
    if problem is not None:
        raise ConfigError(f"{key} {problem}; {fix or f'choose another {key}'}", key=key)
    return Path(path)
