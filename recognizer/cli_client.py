"""The client half of the `recognizer` command line: every call against a running server.

Each command makes one request and prints a table for people, or with `--json` the response
message as JSON for scripts. Imports stay light: gRPC, the stubs and the client, never the
models or the server.
"""

from __future__ import annotations

import functools
import json
import os
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

Render = Callable[[Any], str]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _connect(target: str, api_key: str) -> Any:
    from recognizer.client import Client

    return Client.connect(target, api_key)


def _read_key(path: Path) -> str:
    """The key in a file: its first line, without surrounding blanks."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"--api-key-file {path}: {exc.strerror}") from None
    lines = text.strip().splitlines()
    if not lines or not lines[0].strip():
        raise click.ClickException(f"--api-key-file {path}: the file is empty")
    return lines[0].strip()


def client_command(group: click.Group, name: str | None = None) -> Callable[..., Any]:
    """A command on `group` that gets a connected client as `c` and returns (message,
    render): the wrapper prints render(message), or the message as JSON with --json."""

    def decorate(fn: Callable[..., tuple[Any, Render]]) -> Callable[..., Any]:
        @group.command(name or fn.__name__.replace("_", "-"), help=fn.__doc__)
        @click.option(
            "--target",
            default=lambda: os.environ.get("RECOGNIZER_TARGET", "127.0.0.1:50051"),
            show_default="127.0.0.1:50051 or RECOGNIZER_TARGET",
        )
        @click.option(
            "--api-key-file",
            type=click.Path(path_type=Path, dir_okay=False),
            default=lambda: os.environ.get("RECOGNIZER_API_KEY_FILE") or None,
            help="File holding the API key (or RECOGNIZER_API_KEY_FILE, or the key itself "
            "in RECOGNIZER_API_KEY): kept out of `ps` and shell history.",
            show_default=False,
        )
        @click.option(
            "--api-key",
            default=lambda: os.environ.get("RECOGNIZER_API_KEY", ""),
            help="API key; visible in `ps` and shell history: prefer --api-key-file.",
            show_default=False,
        )
        @click.option("--json", "as_json", is_flag=True, help="Print the response as JSON.")
        @functools.wraps(fn)
        def run(
            target: str, api_key_file: Path | None, api_key: str, as_json: bool, **kwargs: Any
        ) -> None:
            import grpc
            from google.protobuf.json_format import MessageToJson

            from recognizer.client import describe_error

            if api_key_file is not None:
                api_key = _read_key(api_key_file)
            c = _connect(target, api_key)
            try:
                message, render = fn(c, **kwargs)
            except grpc.RpcError as exc:
                raise click.ClickException(describe_error(exc, target)) from exc
            finally:
                c.close()
            if as_json:
                click.echo(MessageToJson(message, ensure_ascii=False, indent=2))
            else:
                click.echo(render(message))

        return run

    return decorate


def _image(path: Path | None) -> bytes:
    return path.read_bytes() if path is not None else b""


def _when(ts: Any) -> str:
    return datetime.fromtimestamp(ts.seconds, UTC).isoformat(timespec="seconds")


def _codes(reasons: Sequence[Any]) -> str:
    return ",".join(r.code for r in reasons)


IMAGE = click.Path(path_type=Path, exists=True, dir_okay=False)


def register(main: click.Group) -> None:
    """Add the client commands to the `recognizer` group."""

    @client_command(main)
    def health(c: Any) -> tuple[Any, Render]:
        """Print the server's health status."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        resp = health_pb2_grpc.HealthStub(c.channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5.0
        )
        return resp, lambda r: health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)

    @client_command(main, "read-plate")
    @click.argument("image", type=IMAGE)
    def read_plate(c: Any, image: Path) -> tuple[Any, Render]:
        """Read every plate in IMAGE."""
        from recognizer.v1 import common_pb2, recognition_pb2

        resp = c.recognition.ReadPlates(
            recognition_pb2.ReadPlatesRequest(image=image.read_bytes()), metadata=c.metadata
        )

        def render(r: Any) -> str:
            rows = [
                (
                    p.text,
                    f"{p.confidence:.3f}",
                    common_pb2.PlateType.Name(p.type).removeprefix("PLATE_TYPE_").lower(),
                    "yes" if p.pattern_valid else "no",
                    "guessed" if p.province_guessed else "read",
                    " ".join(f"{x.text}:{x.probability:.2f}" for x in p.candidates[1:4]),
                    f"{p.box.x1:.0f},{p.box.y1:.0f},{p.box.x2:.0f},{p.box.y2:.0f}",
                )
                for p in r.plates
            ]
            if not rows:
                return "no plate found"
            head = ["plate", "conf", "type", "valid", "province", "alternatives", "box"]
            return table(head, rows)

        return resp, render

    @client_command(main, "detect-faces")
    @click.argument("image", type=IMAGE)
    @click.option("--all", "all_faces", is_flag=True, help="Every face, not only the largest.")
    def detect_faces(c: Any, image: Path, all_faces: bool) -> tuple[Any, Render]:
        """Detect faces in IMAGE."""
        from recognizer.v1 import common_pb2, recognition_pb2

        sel = common_pb2.FACE_SELECTION_ALL if all_faces else common_pb2.FACE_SELECTION_LARGEST
        resp = c.recognition.DetectFaces(
            recognition_pb2.DetectFacesRequest(image=image.read_bytes(), selection=sel),
            metadata=c.metadata,
        )

        def render(r: Any) -> str:
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
                for i, f in enumerate(r.faces)
            ]
            if not rows:
                return "no face found"
            return table(["#", "score", "box", "size", "quality ok", "reasons", "liveness"], rows)

        return resp, render

    @client_command(main)
    @click.argument("name")
    @click.argument("images", nargs=-1, required=True, type=IMAGE)
    @click.option("--force", is_flag=True, help="Enrol even if the face matches another identity.")
    @click.option("--plate", default="", help="Also bind this plate to the new identity.")
    def enroll(
        c: Any, name: str, images: tuple[Path, ...], force: bool, plate: str
    ) -> tuple[Any, Render]:
        """Create identity NAME and enrol the face in each IMAGE."""
        from recognizer.v1 import identity_pb2

        ident = c.identity.CreateIdentity(
            identity_pb2.CreateIdentityRequest(display_name=name), metadata=c.metadata
        )
        try:
            c.identity.EnrollFace(
                identity_pb2.EnrollFaceRequest(
                    identity_id=ident.identity_id,
                    images=[p.read_bytes() for p in images],
                    force=force,
                    source="cli",
                ),
                metadata=c.metadata,
            )
            if plate:
                c.identity.BindPlate(
                    identity_pb2.BindPlateRequest(identity_id=ident.identity_id, plate=plate),
                    metadata=c.metadata,
                )
        except Exception:
            # Leave nothing half-made behind: an identity without the faces asked for.
            c.identity.DeleteIdentity(
                identity_pb2.DeleteIdentityRequest(identity_id=ident.identity_id),
                metadata=c.metadata,
            )
            raise
        resp = c.identity.GetIdentity(
            identity_pb2.GetIdentityRequest(identity_id=ident.identity_id), metadata=c.metadata
        )
        return (
            resp,
            lambda r: (
                f"identity {r.identity_id} ({r.display_name}): {r.face_count} face(s) enrolled"
                + (f", plate {', '.join(r.plates)} bound" if r.plates else "")
            ),
        )

    @client_command(main)
    @click.argument("image", type=IMAGE)
    @click.option("--top-k", type=int, default=5, show_default=True)
    def identify(c: Any, image: Path, top_k: int) -> tuple[Any, Render]:
        """Identify the largest face in IMAGE against the gallery (1:N)."""
        from recognizer.v1 import recognition_pb2

        resp = c.recognition.IdentifyFace(
            recognition_pb2.IdentifyFaceRequest(image=image.read_bytes(), top_k=top_k),
            metadata=c.metadata,
        )

        def render(r: Any) -> str:
            if r.unknown:
                return f"unknown (best score {r.best_score:.3f} < threshold {r.threshold:.3f})"
            return table(
                ["identity", "name", "score", "est. FMR (1:1)", "est. FPIR (1:N)"],
                [
                    (
                        x.identity_id,
                        x.display_name,
                        f"{x.score:.3f}",
                        f"{x.estimated_fmr:.1e}",
                        f"{x.estimated_fpir:.1e} (N={x.gallery_size})",
                    )
                    for x in r.candidates
                ],
            )

        return resp, render

    @client_command(main)
    @click.argument("identity_id")
    @click.argument("image", type=IMAGE)
    def verify(c: Any, identity_id: str, image: Path) -> tuple[Any, Render]:
        """Verify that the face in IMAGE belongs to IDENTITY_ID (1:1)."""
        from recognizer.v1 import recognition_pb2

        resp = c.recognition.VerifyFace(
            recognition_pb2.VerifyFaceRequest(identity_id=identity_id, image=image.read_bytes()),
            metadata=c.metadata,
        )
        return (
            resp,
            lambda r: (
                f"{'MATCH' if r.match else 'NO MATCH'}  score {r.score:.3f}  "
                f"threshold {r.threshold:.3f}  estimated FMR {r.estimated_fmr:.1e}"
            ),
        )

    @client_command(main)
    @click.option("--gate", "gate_id", required=True, help="The gate deciding.")
    @click.option("--event", "event_id", default="", help="Event id (default: a new one).")
    @click.option(
        "--vehicle",
        type=IMAGE,
        multiple=True,
        help="A frame with the plate; repeat for a burst (at most 4, in time order).",
    )
    @click.option(
        "--face",
        type=IMAGE,
        multiple=True,
        help="A frame with the driver's face; repeat for a burst (at most 4).",
    )
    @click.option("--plate", "plate_text", default="", help="A plate the gate read itself.")
    @click.option("--amount", "amount_minor", type=int, required=True, help="Minor units.")
    @click.option("--currency", default="CNY", show_default=True)
    @click.option("--direction", type=click.Choice(["entry", "exit", "unspecified"]))
    def authorize(
        c: Any,
        gate_id: str,
        event_id: str,
        vehicle: tuple[Path, ...],
        face: tuple[Path, ...],
        plate_text: str,
        amount_minor: int,
        currency: str,
        direction: str | None,
    ) -> tuple[Any, Render]:
        """Ask for a gate decision: ALLOW, STEP_UP or DENY, with its reasons and the
        estimated false-accept probability. A retry with the same --event replays it."""
        from recognizer.v1 import gate_pb2

        resp = c.gate.Authorize(
            gate_pb2.AuthorizeRequest(
                gate_id=gate_id,
                event_id=event_id or uuid.uuid4().hex,
                # The first frame in the single field, as before bursts; the rest repeated.
                vehicle_image=_image(vehicle[0] if vehicle else None),
                vehicle_images=[_image(p) for p in vehicle[1:]],
                face_image=_image(face[0] if face else None),
                face_images=[_image(p) for p in face[1:]],
                plate_text=plate_text,
                amount_minor=amount_minor,
                currency=currency,
                direction=f"DIRECTION_{(direction or 'unspecified')}".upper(),
            ),
            metadata=c.metadata,
        )

        def render(r: Any) -> str:
            lines = [
                f"{gate_pb2.Outcome.Name(r.outcome).removeprefix('OUTCOME_')}"
                f"{'  (replayed)' if r.replayed else ''}  event {r.event_id or event_id}",
                f"identity     {r.identity_id or '-'}",
                f"payment ref  {r.payment_ref or '-'}",
                f"plate        {r.plate.text or '-'}"
                f"{'  (province guessed)' if r.plate.province_guessed else ''}",
                f"face score   {r.face_score:.3f}" if r.HasField("face") else "face         -",
                f"fused LLR    {r.fused_llr:.2f} (plate {r.plate_llr:.2f}, face {r.face_llr:.2f})",
                f"est. FAR     {r.estimated_far:.2e}",
                f"policy       {r.policy_id}",
                "reasons:",
                *(f"  {x.code}: {x.message}" for x in r.reasons),
            ]
            return "\n".join(lines)

        return resp, render

    @client_command(main, "bind-plate")
    @click.argument("identity_id")
    @click.argument("plate")
    def bind_plate(c: Any, identity_id: str, plate: str) -> tuple[Any, Render]:
        """Bind PLATE to IDENTITY_ID."""
        from recognizer.v1 import identity_pb2

        resp = c.identity.BindPlate(
            identity_pb2.BindPlateRequest(identity_id=identity_id, plate=plate),
            metadata=c.metadata,
        )
        return resp, lambda r: f"plate {r.plate} bound to {r.identity_id}"

    @client_command(main, "unbind-plate")
    @click.argument("identity_id")
    @click.argument("plate")
    def unbind_plate(c: Any, identity_id: str, plate: str) -> tuple[Any, Render]:
        """Unbind PLATE from IDENTITY_ID."""
        from recognizer.v1 import identity_pb2

        resp = c.identity.UnbindPlate(
            identity_pb2.UnbindPlateRequest(identity_id=identity_id, plate=plate),
            metadata=c.metadata,
        )
        return resp, lambda _r: f"plate {plate} unbound from {identity_id}"

    @client_command(main, "bind-payment")
    @click.argument("identity_id")
    @click.argument("payment_ref")
    @click.option(
        "--factors",
        type=click.Choice(["plate", "face", "plate_and_face"]),
        default="plate_and_face",
        show_default=True,
        help="What must match before this binding is charged without a tap.",
    )
    @click.option("--ceiling", "ceiling_minor", type=int, default=0, help="0: no ceiling.")
    def bind_payment(
        c: Any, identity_id: str, payment_ref: str, factors: str, ceiling_minor: int
    ) -> tuple[Any, Render]:
        """Bind the payment reference PAYMENT_REF to IDENTITY_ID."""
        from recognizer.v1 import identity_pb2

        resp = c.identity.BindPayment(
            identity_pb2.BindPaymentRequest(
                identity_id=identity_id,
                payment_ref=payment_ref,
                factors=f"FACTOR_{factors.upper()}",
                ceiling_minor=ceiling_minor,
            ),
            metadata=c.metadata,
        )
        return resp, lambda r: f"binding {r.binding_id}: {r.payment_ref} on {factors}"

    @client_command(main, "unbind-payment")
    @click.argument("identity_id")
    @click.argument("binding_id")
    def unbind_payment(c: Any, identity_id: str, binding_id: str) -> tuple[Any, Render]:
        """Remove the payment binding BINDING_ID of IDENTITY_ID."""
        from recognizer.v1 import identity_pb2

        resp = c.identity.UnbindPayment(
            identity_pb2.UnbindPaymentRequest(identity_id=identity_id, binding_id=binding_id),
            metadata=c.metadata,
        )
        return resp, lambda _r: f"binding {binding_id} removed"

    @main.group()
    def identities() -> None:
        """List, show and delete identities."""

    def _identity_rows(items: Sequence[Any]) -> list[tuple[Any, ...]]:
        return [
            (
                i.identity_id,
                i.display_name,
                i.face_count,
                ",".join(i.plates),
                ",".join(f"{p.payment_ref}({p.binding_id[:8]})" for p in i.payments),
                _when(i.created_at),
            )
            for i in items
        ]

    headers = ["identity", "name", "faces", "plates", "payments", "created"]

    @client_command(identities, "list")
    @click.option("--page-size", type=int, default=100, show_default=True)
    @click.option("--page-token", default="")
    def identities_list(c: Any, page_size: int, page_token: str) -> tuple[Any, Render]:
        """One page of identities (--page-token continues)."""
        from recognizer.v1 import identity_pb2

        resp = c.identity.ListIdentities(
            identity_pb2.ListIdentitiesRequest(page_size=page_size, page_token=page_token),
            metadata=c.metadata,
        )
        return (
            resp,
            lambda r: (
                table(headers, _identity_rows(r.identities))
                + (f"\nnext page: --page-token {r.next_page_token}" if r.next_page_token else "")
            ),
        )

    @client_command(identities, "show")
    @click.argument("identity_id")
    def identities_show(c: Any, identity_id: str) -> tuple[Any, Render]:
        """One identity with its faces, plates and payment bindings."""
        from recognizer.v1 import identity_pb2

        resp = c.identity.GetIdentity(
            identity_pb2.GetIdentityRequest(identity_id=identity_id), metadata=c.metadata
        )
        return resp, lambda r: table(headers, _identity_rows([r]))

    @client_command(identities, "delete")
    @click.argument("identity_id")
    def identities_delete(c: Any, identity_id: str) -> tuple[Any, Render]:
        """Delete an identity: rows, index vectors, plates and bindings."""
        from recognizer.v1 import identity_pb2

        resp = c.identity.DeleteIdentity(
            identity_pb2.DeleteIdentityRequest(identity_id=identity_id), metadata=c.metadata
        )
        return (
            resp,
            lambda r: (
                f"deleted {identity_id}: {r.templates_removed} template(s), "
                f"{r.plates_removed} plate(s), {r.payments_removed} payment binding(s)"
            ),
        )

    @client_command(main)
    @click.option("--gate", "gate_id", default="", help="Only this gate.")
    @click.option("--identity", "identity_id", default="", help="Only this identity.")
    @click.option("--limit", type=int, default=50, show_default=True)
    def decisions(c: Any, gate_id: str, identity_id: str, limit: int) -> tuple[Any, Render]:
        """List recent gate decision records (admin)."""
        from recognizer.v1 import gate_pb2

        resp = c.admin.ListDecisions(
            gate_pb2.ListDecisionsRequest(gate_id=gate_id, identity_id=identity_id, limit=limit),
            metadata=c.metadata,
        )

        def render(r: Any) -> str:
            rows = [
                (
                    _when(d.response.decided_at),
                    d.gate_id,
                    d.event_id,
                    gate_pb2.Outcome.Name(d.response.outcome).removeprefix("OUTCOME_"),
                    d.response.identity_id[:12],
                    d.response.plate.text,
                    f"{d.response.estimated_far:.1e}",
                    _codes(d.response.reasons),
                )
                for d in r.decisions
            ]
            return table(
                ["decided", "gate", "event", "outcome", "identity", "plate", "est. FAR", "reasons"],
                rows,
            )

        return resp, render

    @client_command(main)
    @click.option("--since", type=click.DateTime(), default=None, help="From this time (UTC).")
    @click.option("--until", type=click.DateTime(), default=None, help="Before this time (UTC).")
    @click.option("--key", "key_name", default="", help="Only this API key's rows (its name).")
    @click.option("--identity", "identity_id", default="", help="Only rows about this identity.")
    @click.option("--page-size", type=int, default=100, show_default=True)
    @click.option("--page-token", default="")
    def audit(
        c: Any,
        since: datetime | None,
        until: datetime | None,
        key_name: str,
        identity_id: str,
        page_size: int,
        page_token: str,
    ) -> tuple[Any, Render]:
        """List the audit, newest first (admin): who did or read what, failed sign-ins."""
        from recognizer.v1 import gate_pb2

        req = gate_pb2.ListAuditRequest(
            key_name=key_name, identity_id=identity_id, page_size=page_size, page_token=page_token
        )
        for name, when in (("since", since), ("until", until)):
            if when is not None:
                getattr(req, name).FromDatetime(when.replace(tzinfo=when.tzinfo or UTC))
        resp = c.admin.ListAudit(req, metadata=c.metadata)

        def render(r: Any) -> str:
            from google.protobuf.json_format import MessageToDict

            rows = [
                (_when(a.at), a.key_name, a.action, a.target, json.dumps(MessageToDict(a.detail)))
                for a in r.records
            ]
            return table(["at", "key", "action", "target", "detail"], rows) + (
                f"\nnext page: --page-token {r.next_page_token}" if r.next_page_token else ""
            )

        return resp, render
