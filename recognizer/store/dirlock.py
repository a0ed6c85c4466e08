"""The lock on a data directory: a running server holds it, offline maintenance takes it.

`recognizer serve` holds it for its life, so `recognizer restore` cannot replace the files
under a live server, and a second server cannot open the same directory. It is an flock on
a file in the directory: the kernel drops it when the process ends, however it ends, so a
crash leaves no stale lock to clean up.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from recognizer.store import files

LOCK_NAME = "serve.lock"


class DataDirHeld(RuntimeError):
    """Another process holds the data directory."""


@dataclass(frozen=True, slots=True)
class DataDirLock:
    path: Path
    fd: int

    def release(self) -> None:
        os.close(self.fd)  # closing the descriptor drops the flock


def hold(data_dir: Path, holder: str) -> DataDirLock:
    """Take the data directory's lock, or raise DataDirHeld naming who has it.
    `holder` ("server", "restore") is written in the file for the next one to read."""
    path = Path(data_dir) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, files.FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise DataDirHeld(f"{data_dir} is in use by {other}") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{holder} (pid {os.getpid()})\n".encode(), 0)
    return DataDirLock(path, fd)


@contextlib.contextmanager
def held(data_dir: Path, holder: str) -> Iterator[DataDirLock]:
    lock = hold(data_dir, holder)
    try:
        yield lock
    finally:
        lock.release()
