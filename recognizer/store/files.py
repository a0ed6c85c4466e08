"""Private files: the data directory is 0700 and everything in it 0600, created so.

Modes are given at creation (os.open / mkdir) rather than fixed afterwards, so there is no
moment when a file holding biometric data is readable by others. Files made by an older
release with looser modes are tightened when opened.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("recognizer.store.files")

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) as 0700; tighten it if it exists looser."""
    path = Path(path)
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    tighten(path, DIR_MODE)
    return path


def tighten(path: Path, mode: int = FILE_MODE) -> None:
    """chmod to `mode` if group or others have any access; missing paths are skipped."""
    try:
        current = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if current & 0o077:
        os.chmod(path, mode)
        log.info("tightened %s from %o to %o", path, current, mode)


def create_private(path: Path) -> None:
    """Create an empty 0600 file if none exists (so SQLite opens it instead of creating it
    with the umask's mode; its -wal and -shm files then copy the database file's mode)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))


def open_private(path: Path) -> BinaryIO:
    """A new file opened for writing with mode 0600 (truncated if it exists)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # an existing file keeps its mode through O_CREAT
    return os.fdopen(fd, "wb")
