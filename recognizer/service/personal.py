"""Personal fields (display names, plates, payment references, external refs, metadata):
only an admin key reads them, and each such read is audited; other keys get them blanked.

A verifier needs identity ids and scores to verify a payer, nothing that names or locates
a person. The servicers build their full responses, then pass them through here.
"""

from __future__ import annotations

from collections.abc import Iterable

from recognizer.service import principal
from recognizer.store.ports import Audit
from recognizer.store.rows import AuditEntry
from recognizer.v1 import identity_pb2, recognition_pb2

READ = "read_personal"


def identity(msg: identity_pb2.Identity) -> identity_pb2.Identity:
    """For a non-admin key: the identity with its personal fields cleared (ids, face count,
    template ids and binding ids stay)."""
    if principal.reads_personal():
        return msg
    msg.ClearField("display_name")
    msg.ClearField("external_ref")
    msg.ClearField("metadata")
    msg.ClearField("plates")
    for payment in msg.payments:
        payment.ClearField("payment_ref")
    return msg


def candidates(msg: recognition_pb2.IdentifyFaceResponse) -> recognition_pb2.IdentifyFaceResponse:
    """For a non-admin key: 1:N candidates by id and score, without their names."""
    if not principal.reads_personal():
        for c in msg.candidates:
            c.ClearField("display_name")
    return msg


def plate_lookup(msg: identity_pb2.LookupPlateResponse) -> identity_pb2.LookupPlateResponse:
    """For a non-admin key: the holders' ids, without the plate echoed back."""
    if not principal.reads_personal():
        msg.ClearField("plate")
    return msg


def audit_reads(store: Audit, identity_ids: Iterable[str]) -> None:
    """An admin read personal fields of these identities: one audit row each, with the key's
    name and the method, committed before the answer leaves (no row, no answer)."""
    if not principal.reads_personal():
        return
    detail = {"method": principal.method()}
    entries = [AuditEntry(principal.actor(), READ, i, detail) for i in dict.fromkeys(identity_ids)]
    if entries:
        store.audit_all(entries)
