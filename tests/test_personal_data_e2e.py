"""Personal data in reach (issue 32), end to end on a real server and real models: the role
matrix over every RPC (a verifier gets no plate, name or payment reference), admin reads of
personal fields audited with the key's name, the method and the identity, failed
authentication audited once per peer, and AdminService.ListAudit with its filters."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from recognizer.client import Client
from recognizer.config import hash_key
from recognizer.policy import PolicySet
from recognizer.service.authfail import FailureWindow
from recognizer.service.runtime import fusion_path
from recognizer.service.server import RunningServer
from recognizer.v1 import gate_pb2, identity_pb2, recognition_pb2
from tests import helpers
from tests.conftest import KEYS, client_for, loaded_server, missing
from tests.helpers import Clock, violation
from tests.helpers import lfw_face as face

POLICY = {
    "policy_id": "roles",
    "gates": ["G-*"],
    "plate_only_max_minor": 500,
    "target_far": 1e-5,
    "track_presence": True,
    "trust_plate_text": True,  # plate_text stands for the gate's own reader
}
NAME = "Colin_Powell"
PLATE = "京A61734"
REF = "pay-ref-7c1e0a"
SERVICES = (identity_pb2, recognition_pb2, gate_pb2)


def key_name(role: str) -> str:
    """The name the server gives a key from RECOGNIZER_API_KEYS (never the key itself)."""
    return f"env-{role}-{hash_key(KEYS[role])[:8]}"


SCOPED_KEY = "roles-gate-1-key"  # a gate key that may act for gate G-1 alone
# The failed-authentication window's clock: only the test that needs a minute to pass moves it.
AUTH_CLOCK = Clock()


# Its own server: the failed-authentication window (auth_window, its clock) is server-wide.
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with loaded_server(
        tmp_path_factory.mktemp("roles"),
        extra_keys=f"gate@G-1:{SCOPED_KEY}",
        policies=PolicySet.from_config([POLICY]),
        auth_window=FailureWindow(60.0, clock=AUTH_CLOCK),
    ) as running:
        if not fusion_path(running.runtime.config).is_file():
            missing("no fusion calibration; run scripts/calibrate_fusion.py")
        yield running


@pytest.fixture(scope="module")
def payer(c: Client) -> str:
    """A payer with a name, a face, a plate and a payment reference, and one decision."""
    iid = helpers.make_payer(c, NAME, [PLATE], payment_ref=REF)
    r = c.gate.Authorize(
        gate_pb2.AuthorizeRequest(
            gate_id="G-1",
            event_id=uuid.uuid4().hex,
            plate_text=PLATE,
            face_image=face(NAME, 3),
            amount_minor=1000,
            currency="CNY",
        ),
        metadata=c.metadata,
    )
    assert r.identity_id == iid and r.payment_ref == REF  # the decision holds both
    return iid


def needles() -> dict[str, bytes]:
    """What must not reach a verifier: the name, the plate (also without its province
    character) and the payment reference."""
    return {
        "name": NAME.encode(),
        "plate": PLATE.encode(),
        "plate without province": PLATE[1:].encode(),
        "payment reference": REF.encode(),
    }


def requests(iid: str, template_id: str) -> dict[str, Message]:
    """One request for every RPC of the API, naming the payer's own data."""
    frame, _ = helpers.scene(0)
    photo = face(NAME, 3)
    return {
        "CreateIdentity": identity_pb2.CreateIdentityRequest(display_name="someone"),
        "GetIdentity": identity_pb2.GetIdentityRequest(identity_id=iid),
        "ListIdentities": identity_pb2.ListIdentitiesRequest(page_size=1000),
        "DeleteIdentity": identity_pb2.DeleteIdentityRequest(identity_id=iid),
        "EnrollFace": identity_pb2.EnrollFaceRequest(identity_id=iid, images=[photo]),
        "RemoveFace": identity_pb2.RemoveFaceRequest(identity_id=iid, template_id=template_id),
        "BindPlate": identity_pb2.BindPlateRequest(identity_id=iid, plate="京B12345"),
        "UnbindPlate": identity_pb2.UnbindPlateRequest(identity_id=iid, plate=PLATE),
        "LookupPlate": identity_pb2.LookupPlateRequest(plate=PLATE),
        "BindPayment": identity_pb2.BindPaymentRequest(identity_id=iid, payment_ref="x"),
        "UnbindPayment": identity_pb2.UnbindPaymentRequest(identity_id=iid, binding_id="b"),
        "DetectFaces": recognition_pb2.DetectFacesRequest(image=photo),
        "ReadPlates": recognition_pb2.ReadPlatesRequest(image=frame),
        "VerifyFace": recognition_pb2.VerifyFaceRequest(identity_id=iid, image=photo),
        "IdentifyFace": recognition_pb2.IdentifyFaceRequest(image=photo, top_k=5),
        "Authorize": gate_pb2.AuthorizeRequest(
            gate_id="G-2", event_id=uuid.uuid4().hex, plate_text=PLATE, amount_minor=100
        ),
        "ListDecisions": gate_pb2.ListDecisionsRequest(limit=1000),
        "GetMetrics": gate_pb2.GetMetricsRequest(),
        "ListAudit": gate_pb2.ListAuditRequest(page_size=1000),
        # A server stream: the verifier's answer (or the error) comes on reading it.
        "WatchDecisions": gate_pb2.WatchDecisionsRequest(),
    }


def stub_method(c: Client, name: str) -> Callable[..., Any]:
    for stub in (c.identity, c.recognition, c.gate, c.admin):
        if hasattr(stub, name):
            return getattr(stub, name)  # type: ignore[no-any-return]
    raise AssertionError(f"no stub has {name}")


def call(c: Client, name: str, request: Message) -> tuple[bytes, grpc.StatusCode]:
    """Everything the caller gets back: the response's bytes, or the error's message,
    details and trailing metadata."""
    try:
        response = stub_method(c, name)(request, metadata=c.metadata, timeout=60)
        if not isinstance(response, Message):  # a stream: its first message, or its error
            first = next(response)
            response.cancel()
            return first.SerializeToString(), grpc.StatusCode.OK
    except grpc.RpcError as err:
        trailers = b"".join(
            v if isinstance(v, bytes) else v.encode() for _, v in err.trailing_metadata() or ()
        )
        return (err.details() or "").encode() + trailers, err.code()
    return response.SerializeToString(), grpc.StatusCode.OK


def every_rpc() -> set[str]:
    return {
        m.name
        for mod in SERVICES
        for s in mod.DESCRIPTOR.services_by_name.values()
        for m in s.methods
    }


def test_a_verifier_gets_no_plate_name_or_payment_reference_from_any_rpc(
    server: RunningServer, c: Client, payer: str
) -> None:
    template_id = c.identity.GetIdentity(
        identity_pb2.GetIdentityRequest(identity_id=payer), metadata=c.metadata
    ).template_ids[0]
    reqs = requests(payer, template_id)
    assert set(reqs) == every_rpc(), "the role matrix must call every RPC of the API"
    verifier = client_for(server, "verifier")
    try:
        got = {name: call(verifier, name, req) for name, req in reqs.items()}
    finally:
        verifier.close()
    leaks = [
        (name, what)
        for name, (data, _) in got.items()
        for what, n in needles().items()
        if n in data
    ]
    assert not leaks, f"a verifier got personal data: {leaks}"
    answered = {name for name, (_, code) in got.items() if code is grpc.StatusCode.OK}
    assert answered == {
        "GetIdentity",
        "ListIdentities",
        "LookupPlate",
        "DetectFaces",
        "VerifyFace",
        "IdentifyFace",
    }
    denied = {name for name, (_, code) in got.items() if code is grpc.StatusCode.PERMISSION_DENIED}
    assert denied == set(reqs) - answered
    # What a verifier does get: ids and scores.
    md = c.metadata
    verifier = client_for(server, "verifier")
    vmd = verifier.metadata
    try:
        shown = verifier.identity.GetIdentity(reqs["GetIdentity"], metadata=vmd)
        assert shown.identity_id == payer and shown.face_count == 1 and shown.payments
        assert not shown.plates and not shown.display_name and not shown.payments[0].payment_ref
        looked = verifier.identity.LookupPlate(reqs["LookupPlate"], metadata=vmd)
        assert list(looked.identity_ids) == [payer] and not looked.plate
        best = verifier.recognition.IdentifyFace(reqs["IdentifyFace"], metadata=vmd).candidates[0]
        assert best.identity_id == payer and best.score > 0 and not best.display_name
        assert verifier.recognition.VerifyFace(reqs["VerifyFace"], metadata=vmd).match
    finally:
        verifier.close()
    # The control: an admin key gets each of them back, so the search above can find them.
    for name in ("GetIdentity", "ListIdentities"):
        data, code = call(c, name, reqs[name])
        assert code is grpc.StatusCode.OK
        assert all(n in data for n in needles().values()), name
    decisions = call(c, "ListDecisions", reqs["ListDecisions"])[0]
    assert needles()["plate"] in decisions and needles()["payment reference"] in decisions
    assert needles()["name"] in call(c, "IdentifyFace", reqs["IdentifyFace"])[0]
    assert needles()["plate"] in call(c, "LookupPlate", reqs["LookupPlate"])[0]
    # The verifier's refusals are audited under its key's name, once in the window.
    refused = c.admin.ListAudit(
        gate_pb2.ListAuditRequest(key_name=key_name("verifier")), metadata=md
    )
    rows = [r for r in refused.records if r.action == "auth_failed"]
    assert len(rows) == 1 and rows[0].target == "ipv4:127.0.0.1"
    assert rows[0].detail["count"] == 1 and "ROLE_NOT_ALLOWED" in rows[0].detail["reasons"]


def audit(c: Client, **filters: Any) -> list[gate_pb2.AuditRecord]:
    return list(
        c.admin.ListAudit(
            gate_pb2.ListAuditRequest(page_size=1000, **filters), metadata=c.metadata
        ).records
    )


def test_admin_reads_of_personal_fields_are_audited_with_the_key_method_and_identity(
    c: Client, payer: str
) -> None:
    md = c.metadata
    before = {r.id for r in audit(c, identity_id=payer)}
    c.identity.GetIdentity(identity_pb2.GetIdentityRequest(identity_id=payer), metadata=md)
    c.identity.ListIdentities(identity_pb2.ListIdentitiesRequest(), metadata=md)
    c.identity.LookupPlate(identity_pb2.LookupPlateRequest(plate=PLATE), metadata=md)
    c.recognition.IdentifyFace(
        recognition_pb2.IdentifyFaceRequest(image=face(NAME, 2)), metadata=md
    )
    c.admin.ListDecisions(gate_pb2.ListDecisionsRequest(identity_id=payer), metadata=md)
    c.admin.ListAudit(gate_pb2.ListAuditRequest(identity_id=payer), metadata=md)
    decided = c.gate.Authorize(
        gate_pb2.AuthorizeRequest(
            gate_id="G-2", event_id=uuid.uuid4().hex, plate_text=PLATE, amount_minor=100
        ),
        metadata=md,
    )
    assert decided.identity_id == payer and decided.payment_ref == REF  # what an admin reads
    rows = [r for r in audit(c, identity_id=payer) if r.id not in before]
    reads = [r for r in rows if r.action == "read_personal"]
    assert {r.detail["method"] for r in reads} == {
        f"/recognizer.v1.{m}"
        for m in (
            "IdentityService/GetIdentity",
            "IdentityService/ListIdentities",
            "IdentityService/LookupPlate",
            "RecognitionService/IdentifyFace",
            "AdminService/ListDecisions",
            "AdminService/ListAudit",
            "GateService/Authorize",
        )
    }
    assert {r.key_name for r in reads} == {key_name("admin")}
    assert all(r.target == payer for r in reads)


def test_audit_rows_name_the_key_never_the_role_or_the_key(c: Client, payer: str) -> None:
    rows = audit(c, identity_id=payer)
    actions = {r.action for r in rows}
    assert {"create_identity", "enroll_face", "bind_plate", "bind_payment"} <= actions
    assert {r.key_name for r in rows} == {key_name("admin")}
    everything = b"".join(r.SerializeToString() for r in audit(c))
    for secret in KEYS.values():
        assert secret.encode() not in everything


def test_failed_authentication_is_audited_once_per_peer_a_minute_with_a_count(
    server: RunningServer, c: Client
) -> None:
    def fail(keys: list[str]) -> None:
        for key in keys:
            stranger = Client.connect(f"127.0.0.1:{server.port}", key)
            with pytest.raises(grpc.RpcError) as err:
                stranger.identity.ListIdentities(
                    identity_pb2.ListIdentitiesRequest(), metadata=stranger.metadata
                )
            assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
            stranger.close()

    def rows() -> list[gate_pb2.AuditRecord]:
        found = audit(c, identity_id="ipv4:127.0.0.1")  # the peer, whatever its port
        return [r for r in reversed(found) if r.action == "auth_failed" and r.key_name == ""]

    fail(["wrong-key", "", "another-wrong-key", "wrong-key"])
    # The first failure at once; the next three are counted for the row after the minute.
    first = rows()
    assert len(first) == 1 and first[0].detail["count"] == 1
    assert dict(first[0].detail["reasons"]) == {"API_KEY_INVALID": 1}
    AUTH_CLOCK.now += 60.0
    fail(["", "wrong-key"])
    later = rows()
    assert len(later) == 2, "the second failure after the minute is counted, not written"
    assert later[1].detail["count"] == 4  # three from the first minute, one after it
    assert dict(later[1].detail["reasons"]) == {"API_KEY_INVALID": 2, "API_KEY_MISSING": 2}


def test_a_gate_key_used_at_another_gate_is_audited_as_a_failed_authentication(
    server: RunningServer, c: Client
) -> None:
    # A stolen gate key tried at other gates: refused, and the refusal is in the audit
    # with the key's name, as an unknown key's would be.
    scoped = Client.connect(f"127.0.0.1:{server.port}", SCOPED_KEY, retry=False)
    try:
        with pytest.raises(grpc.RpcError) as err:
            scoped.gate.Authorize(
                gate_pb2.AuthorizeRequest(
                    gate_id="G-2",
                    event_id=uuid.uuid4().hex,
                    plate_text=PLATE,
                    amount_minor=100,
                    currency="CNY",
                ),
                metadata=scoped.metadata,
            )
    finally:
        scoped.close()
    assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    name = f"env-gate-{hash_key(SCOPED_KEY)[:8]}"
    rows = [
        r
        for r in audit(c, identity_id="ipv4:127.0.0.1")
        if r.action == "auth_failed" and r.key_name == name
    ]
    assert len(rows) == 1, [(r.key_name, dict(r.detail)) for r in rows]
    assert dict(rows[0].detail["reasons"]) == {"GATE_OUT_OF_SCOPE": 1}


def test_the_audit_lists_by_time_key_and_identity_in_pages(c: Client, payer: str) -> None:
    md = c.metadata
    start = timestamp_pb2.Timestamp()
    start.GetCurrentTime()
    other = c.identity.CreateIdentity(
        identity_pb2.CreateIdentityRequest(display_name="paged"), metadata=md
    ).identity_id
    for _ in range(3):
        c.identity.GetIdentity(identity_pb2.GetIdentityRequest(identity_id=other), metadata=md)
    end = timestamp_pb2.Timestamp()
    end.GetCurrentTime()
    window = audit(c, since=start, until=end)
    assert [r.action for r in window if r.target == other] == ["read_personal"] * 3 + [
        "create_identity"
    ]  # newest first
    assert all(start.ToNanoseconds() <= r.at.ToNanoseconds() < end.ToNanoseconds() for r in window)
    assert audit(c, since=start, until=end, key_name="nobody") == []
    pages, token = [], ""
    for _ in range(10):  # bounded: two records a page
        page = c.admin.ListAudit(
            gate_pb2.ListAuditRequest(identity_id=other, page_size=2, page_token=token),
            metadata=md,
        )
        pages.append([r.id for r in page.records])
        token = page.next_page_token
        if not token:
            break
    ids = [i for p in pages for i in p]
    assert len(pages) >= 2 and all(len(p) <= 2 for p in pages)
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids) >= 4


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"page_size": 1001}, "page_size"),
        ({"page_size": -1}, "page_size"),
        ({"page_token": "not-a-token"}, "page_token"),
        ({"page_token": "-5"}, "page_token"),
        (
            {
                "since": timestamp_pb2.Timestamp(seconds=10),
                "until": timestamp_pb2.Timestamp(seconds=5),
            },
            "until",
        ),
        (
            {
                "since": timestamp_pb2.Timestamp(seconds=10),
                "until": timestamp_pb2.Timestamp(seconds=10),
            },
            "until",
        ),
        ({"since": timestamp_pb2.Timestamp(seconds=0, nanos=-1)}, "since"),
        ({"until": timestamp_pb2.Timestamp(seconds=2**40)}, "until"),
        ({"key_name": "k" * 257}, "key_name"),
        ({"identity_id": "i" * 65}, "identity_id"),
    ],
)
def test_a_bad_audit_filter_is_invalid_argument(
    c: Client, fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        c.admin.ListAudit(gate_pb2.ListAuditRequest(**fields), metadata=c.metadata)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert violation(err.value)[1] == field


def test_only_admin_lists_the_audit(server: RunningServer) -> None:
    for role in ("verifier", "gate"):
        other = client_for(server, role)
        with pytest.raises(grpc.RpcError) as err:
            other.admin.ListAudit(gate_pb2.ListAuditRequest(), metadata=other.metadata)
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
        other.close()


def test_the_audit_command_lists_through_list_audit(server: RunningServer, payer: str) -> None:
    from click.testing import CliRunner

    from recognizer.cli import main

    env = {"RECOGNIZER_API_KEY": KEYS["admin"], "RECOGNIZER_TARGET": f"127.0.0.1:{server.port}"}
    done = CliRunner().invoke(
        main, ["audit", "--identity", payer, "--key", key_name("admin")], env=env
    )
    assert done.exit_code == 0, done.output
    assert "bind_plate" in done.output and key_name("admin") in done.output
    bad = CliRunner().invoke(main, ["audit", "--page-token", "x"], env=env)
    assert bad.exit_code != 0 and "page_token" in bad.output
