"""Operations on a data directory: online backup, offline restore, retention purge.

A backup is consistent: the FAISS index files are copied first (each is replaced atomically by
its writer, so a copy is always a whole file), then the SQLite store through sqlite3's online
backup API. The index therefore never reflects more than the store; on start the gallery
replays the store's changes past the index watermark (or rebuilds), so nothing is lost.

A backup is as protected as the data directory: the store is opened with the template key
(checked against its key-check value), blobs stay sealed, an index file is sealed on the way
if it is not already, and the files are 0600 in a 0700 directory.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from recognizer.errors import FailedPrecondition, InvalidArgument
from recognizer.gallery.index import copy_file
from recognizer.onnx import sha256_file
from recognizer.store import dirlock, files
from recognizer.store.crypto import NullCipher, TemplateCipher
from recognizer.store.open import StoreLocation
from recognizer.store.ports import Store

log = logging.getLogger("recognizer.maintenance")

DB_NAME = "recognizer.db"
PG_DUMP_NAME = "recognizer.pgdump"
MANIFEST = "backup.json"
PRE_RESTORE = "pre-restore-"  # + the time of the restore, UTC
PRE_RESTORE_STAMP = "%Y%m%dT%H%M%S"


@dataclass(frozen=True, slots=True)
class BackupInfo:
    path: Path
    store_seq: int
    files: dict[str, str]  # name -> sha256
    created_at: float


def _require_empty(dest: Path) -> None:
    if dest.exists() and any(dest.iterdir()):
        raise InvalidArgument(f"{dest} exists and is not empty", field="dest")


def backup(data_dir: Path, dest: Path, cipher: TemplateCipher | None = None) -> BackupInfo:
    """Online snapshot of a data directory (the server may be running)."""
    db = data_dir / DB_NAME
    if not db.is_file():
        raise InvalidArgument(f"no store at {db}", field="data_dir")
    _require_empty(dest)
    store = StoreLocation(sqlite_path=db).open(cipher or NullCipher())  # refuses a wrong key
    try:
        files.private_dir(dest)
        for index in sorted(data_dir.glob("*.faiss")):
            try:  # before the store: index <= store, always
                copy_file(index, dest / index.name, store.cipher)
            except (OSError, ValueError) as exc:  # derived data: a restore rebuilds it
                log.warning("index file %s not backed up (%s)", index.name, exc)
        store.backup(dest / DB_NAME)
        seq = store.current_seq()
    finally:
        store.close()
    sums = {p.name: sha256_file(p) for p in sorted(dest.iterdir()) if p.name != MANIFEST}
    info = BackupInfo(dest, seq, sums, time.time())
    with files.open_private(dest / MANIFEST) as f:
        manifest = {"store_seq": seq, "files": sums, "created_at": info.created_at}
        f.write(json.dumps(manifest, indent=1).encode())
    return info


def restore(src: Path, data_dir: Path) -> BackupInfo:
    """Replace a data directory's store and index with a verified backup. Refused while a
    server holds the directory (its lock, `store.dirlock`), which it holds meanwhile.

    The files it replaces are kept beside it as `pre-restore-<time>/`."""
    manifest = src / MANIFEST
    if not manifest.is_file():
        raise InvalidArgument(f"{src} is not a backup (no {MANIFEST})", field="src")
    meta = json.loads(manifest.read_text())
    for name, digest in meta["files"].items():
        if sha256_file(src / name) != digest:
            raise FailedPrecondition(f"backup file {name} fails its sha256 check")
    files.private_dir(data_dir)
    try:
        with dirlock.held(data_dir, "restore"):
            _replace(src, data_dir, meta["files"])
    except dirlock.DataDirHeld as exc:
        raise FailedPrecondition(
            f"{exc}: stop the server first; nothing was changed", reason="DATA_DIR_IN_USE"
        ) from None
    return BackupInfo(
        data_dir, int(meta["store_seq"]), dict(meta["files"]), float(meta["created_at"])
    )


def _replace(src: Path, data_dir: Path, names: dict[str, str]) -> None:
    stamp = dt.datetime.now(dt.UTC).strftime(PRE_RESTORE_STAMP)
    aside = data_dir / f"{PRE_RESTORE}{stamp}"
    current = [
        p
        for p in data_dir.iterdir()
        if p.is_file() and (p.suffix == ".faiss" or p.name.startswith(DB_NAME))
    ]
    if current:
        aside.mkdir(mode=files.DIR_MODE)
        for p in current:
            p.rename(aside / p.name)
    for name in names:
        shutil.copy2(src / name, data_dir / name)  # keeps the backup's 0600


def purge_pre_restore(data_dir: Path, older_than_days: float) -> list[Path]:
    """Remove the `pre-restore-<time>/` folders restores left in a data directory that are
    older than N days (by the time in their name; others are left alone). Returns them."""
    if older_than_days < 0:
        raise InvalidArgument("older_than_days must be >= 0", field="older_than_days")
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=older_than_days)
    removed = []
    for folder in sorted(Path(data_dir).glob(f"{PRE_RESTORE}*")):
        try:
            made = dt.datetime.strptime(folder.name.removeprefix(PRE_RESTORE), PRE_RESTORE_STAMP)
        except ValueError:
            continue  # not a name restore gives: not ours to remove
        if folder.is_dir() and made.replace(tzinfo=dt.UTC) < cutoff:
            shutil.rmtree(folder)
            removed.append(folder)
    return removed


def backup_postgres(
    location: StoreLocation, dest: Path, cipher: TemplateCipher | None = None
) -> BackupInfo:
    """pg_dump of a PostgreSQL store into DEST (key checked first). The FAISS index files
    are not part of it: every node rebuilds or replays its own from the restored store."""
    _require_empty(dest)
    store = location.open(cipher or NullCipher())
    try:
        files.private_dir(dest)
        store.backup(dest / PG_DUMP_NAME)
        seq = store.current_seq()
    finally:
        store.close()
    sums = {PG_DUMP_NAME: sha256_file(dest / PG_DUMP_NAME)}
    return BackupInfo(dest, seq, sums, time.time())


@dataclass(frozen=True, slots=True)
class Purged:
    decisions: int
    sightings: int


def purge_store(
    store: Store,
    actor: str,
    target: str,
    sightings_days: float,
    decisions_days: float | None = None,
    audit_nothing: bool = True,
) -> Purged:
    """Retention on an open store: sightings older than `sightings_days` (each plate's latest
    kept, so a parked car keeps its entry), and decisions older than `decisions_days` (None:
    not decisions). One audit row by `actor` says what went, unless nothing went and
    `audit_nothing` is false (the server's scheduled run)."""
    for name, days in (("sightings_days", sightings_days), ("decisions_days", decisions_days)):
        if days is not None and days < 0:
            raise InvalidArgument(f"{name} must be >= 0", field=name)
    now = time.time()
    decisions = 0
    if decisions_days is not None:
        decisions = store.purge_decisions(now - decisions_days * 86400)
    sightings = store.purge_sightings(now - sightings_days * 86400)
    if decisions or sightings or audit_nothing:
        detail: dict[str, float | int] = {"sightings_days": sightings_days, "sightings": sightings}
        if decisions_days is not None:
            detail |= {"decisions_days": decisions_days, "decisions": decisions}
        store.audit(actor, "purge", target, detail)
    return Purged(decisions, sightings)


def purge(
    where: Path | StoreLocation,
    decisions_days: float,
    sightings_days: float,
    actor: str,
    cipher: TemplateCipher | None = None,
) -> Purged:
    """Retention (`recognizer purge`) on a data directory's store or the store at a
    StoreLocation: decisions by `decisions_days`, sightings by `sightings_days`."""
    location = where if isinstance(where, StoreLocation) else StoreLocation(where / DB_NAME)
    store = location.open(cipher or NullCipher())
    try:
        return purge_store(store, actor, str(where), sightings_days, decisions_days)
    finally:
        store.close()
