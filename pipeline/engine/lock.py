"""One run per output folder, enforced by an OS file lock (``flock``)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path

from edgeslim.errors import UserError


@dataclass
class RunLock:
    """One run per output folder, enforced by an OS file lock (``flock``).

    The kernel drops the lock when its process dies, however it dies (SIGKILL, power loss of a
    container), so a lock file left by a killed run is stale by construction and simply taken
    over; a live run's lock cannot be. The file holds the owner's pid, for the messages.
    """

    path: Path
    held: bool = field(default=False, init=False)
    stale_owner: int | None = field(default=None, init=False)  # pid of a dead run whose lock was taken over
    _fd: int | None = field(default=None, init=False, repr=False)

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            except PermissionError:
                raise UserError(f"cannot write to output folder {self.path.parent} (permission denied)") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_pid(fd)
                os.close(fd)
                raise UserError(
                    f"{self.path.parent} is in use by another edgeslim run (pid {owner if owner else 'unknown'}); "
                    "wait for it to finish or use another --out"
                ) from None
            if not self._still_the_lock_file(fd):  # the previous owner removed it while we waited: retry
                os.close(fd)
                continue
            self.stale_owner = _read_pid(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            self._fd, self.held = fd, True
            return self
        raise UserError(f"cannot lock {self.path.parent}")

    def _still_the_lock_file(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False

    def __exit__(self, *exc: object) -> None:
        if self.held and self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # unlink while still holding it, so nobody locks a file on its way out
            os.close(self._fd)
            self._fd, self.held = None, False


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return None
