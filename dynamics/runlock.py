"""One writer per run directory: a second Recorder (another run, a resume, an overwrite) is refused.

A Recorder holds an exclusive advisory lock (``flock``) on ``<run_dir>/.writer.lock`` from before it
touches the directory until ``close``. The system drops the lock when the process ends in any way, SIGKILL
included, so a crashed run can be resumed or replaced at once; only a live writer blocks. Readers
(``open_run``) never lock. The file also names the holder's process id, for the error message. Where
``fcntl`` does not exist (Windows) there is no lock.
"""

from __future__ import annotations

import os
from pathlib import Path

from dynamics.errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

LOCK_NAME = ".writer.lock"


class RunLock:
    """The exclusive write lock of ``run_dir`` (an existing directory), taken at construction.

    The descriptor held for the lock is read-only (a file open for writing would keep its file system from
    being remounted read-only); the process id is written through a second, short-lived one.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self._fd: int | None = None
        if fcntl is None:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError as err:
            raise ConfigError(
                f"cannot create {self.path} ({err.strerror}); choose a writable run_dir", key="run_dir"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(
                f"{run_dir} is being written by another process (pid {holder}); wait for it to end "
                "or stop it, or choose another run_dir",
                key="run_dir",
            ) from None
        self._fd = fd
        try:
            self.path.write_text(f"{os.getpid()}\n")
        except OSError as err:
            self.release()
            raise ConfigError(
                f"cannot write {self.path} ({err.strerror}); choose a writable run directory with free space"
            ) from None

    @staticmethod
    def holder(run_dir: Path) -> str | None:
        """The process id of the live writer of ``run_dir`` (``"?"`` if unnamed), or None when no process holds
        its lock: none ever did, or the writer ended, in any way (a run killed with SIGKILL has no live writer).

        It takes a shared lock for a moment to ask, so a writer starting at that very moment is refused.
        """
        path = Path(run_dir) / LOCK_NAME
        if fcntl is None:
            return None
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return os.read(fd, 32).decode(errors="replace").strip() or "?"
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def release(self) -> None:
        """Give the lock back (idempotent); the file stays, naming no live writer."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
