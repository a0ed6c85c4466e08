"""Plate evidence an attacker cannot steer, through the real Authorize RPC on the real models
and real frames: a look-alike plate bound to a payer, a plate_text that contradicts the
camera, and plate_text at a gate whose reader the policy does not trust."""

from __future__ import annotations

import itertools
import uuid

import grpc
import pytest

from recognizer.client import Client
from recognizer.plate.grammar import is_valid
from recognizer.service.server import RunningServer
from recognizer.v1 import gate_pb2, identity_pb2, recognition_pb2
from tests.conftest import dataset
from tests.helpers import ALLOW, STEP_UP, codes, make_payer, scene
from tests.helpers import lfw_face as face

# The policies are conftest's TEST_POLICIES on the shared `real_server`: plate-only at PA-*
# (a reader the policy does not trust), trusted-reader at PT-* (one it trusts).
PLATE, PLATE_AND_FACE = identity_pb2.FACTOR_PLATE, identity_pb2.FACTOR_PLATE_AND_FACE
_plates = (f"京E{n:05d}" for n in itertools.count(30000))


@pytest.fixture(scope="module")
def server(real_server: RunningServer) -> RunningServer:
    return real_server


def authorize(c: Client, gate: str = "PA-1", **fields: object) -> gate_pb2.AuthorizeResponse:
    fields = {"amount_minor": 500, "currency": "CNY", **fields}
    req = gate_pb2.AuthorizeRequest(gate_id=gate, event_id=uuid.uuid4().hex, **fields)
    return c.gate.Authorize(req, metadata=c.metadata)


def frames() -> list[bytes]:
    """Every sample gate frame: the CCPD scenes and the street photos."""
    from devtools.datasets import decode_file, discover_plate_sets

    out = []
    for pset in discover_plate_sets(dataset("plates")):
        if pset.kind in ("ccpd", "street"):
            out += [s.path.read_bytes() for s in pset.samples if decode_file(s.path) is not None]
    assert len(out) >= 150, len(out)
    return out


def test_a_look_alike_plate_never_pays_on_the_plate_only_tier(c: Client) -> None:
    """A hostile driver learns what the gate reads of his own car (a first pass through it),
    binds a plate one guess away (a valid alternative candidate of that read) to a
    plate-only payer, then drives through again: every sample frame whose read has one.
    No ALLOW (it was 180 of 184)."""
    tried, allowed = 0, []
    for k, frame in enumerate(frames()):
        seen = authorize(c, vehicle_image=frame).plate
        alternatives = [
            x.text for x in seen.candidates[1:] if is_valid(x.text, "cn") and x.text != seen.text
        ]
        if not alternatives:
            continue
        try:
            make_payer(c, None, [alternatives[0]], factors=PLATE, payment_ref=f"look-alike-{k}")
        except grpc.RpcError as err:  # the look-alike is bound already (another frame's)
            assert err.code() is grpc.StatusCode.ALREADY_EXISTS, err
            continue
        tried += 1
        r = authorize(c, vehicle_image=frame)
        # Other modules on the session server bind some scenes' true plates: their owner's
        # ALLOW is no look-alike paying; any look-alike payer charged is.
        if r.outcome == ALLOW and r.payment_ref.startswith("look-alike-"):
            allowed.append((seen.text, alternatives[0], r.plate.text, sorted(codes(r))))
    assert tried >= 50, tried
    assert allowed == [], f"{len(allowed)} of {tried} look-alikes paid: {allowed[:5]}"


def test_the_plate_only_tier_still_pays_on_a_sure_exact_read(c: Client) -> None:
    frame, truth = scene(0)
    pid = make_payer(c, None, [truth], factors=PLATE, payment_ref="own-car")
    r = authorize(c, vehicle_image=frame)
    assert r.outcome == ALLOW and r.identity_id == pid, codes(r)
    assert {"PLATE_EXACT_MATCH", "PLATE_ONLY_TIER"} <= codes(r)


def test_plate_text_that_contradicts_the_camera_charges_nobody(c: Client) -> None:
    """The frame reads one payer's plate; the gate's text names another payer. Before: ALLOW,
    and which payer was charged depended on identity order."""
    frame, truth = scene(1)
    other = next(_plates)
    make_payer(c, "Colin_Powell", [truth], payment_ref="frame-owner")
    make_payer(c, "George_W_Bush", [other], payment_ref="text-owner")
    for gate in ("PA-1", "PT-1"):  # trusting the gate's reader does not outrank its camera
        r = authorize(
            c,
            gate,
            amount_minor=5000,
            vehicle_image=frame,
            plate_text=other,
            face_image=face("Colin_Powell", 1),
        )
        assert r.outcome == STEP_UP, (gate, codes(r))
        assert "PLATE_TEXT_MISMATCH" in codes(r)
        assert r.identity_id == "" and r.payment_ref == ""


def test_plate_text_naming_only_a_candidate_adds_nothing(c: Client) -> None:
    """The camera reads a plate nobody holds; the text names a payer's plate that is only a
    candidate of that read. Before: the text made it an exact read, and the payer paid."""
    frame, _ = scene(2)
    read = c.recognition.ReadPlates(
        recognition_pb2.ReadPlatesRequest(image=frame), metadata=c.metadata
    ).plates[0]
    candidate = next(x.text for x in read.candidates[1:] if is_valid(x.text, "cn"))
    try:
        make_payer(c, None, [candidate], factors=PLATE, payment_ref="candidate-owner")
    except grpc.RpcError as err:  # bound already by the look-alike sweep: a payer holds it
        assert err.code() is grpc.StatusCode.ALREADY_EXISTS, err
    r = authorize(c, vehicle_image=frame, plate_text=candidate)
    assert r.outcome != ALLOW and r.payment_ref == "", codes(r)
    assert "PLATE_TEXT_MISMATCH" in codes(r)


def test_plate_text_alone_pays_only_where_the_gate_reader_is_trusted(c: Client) -> None:
    plate, other = next(_plates), next(_plates)  # two cars: one at each gate
    make_payer(c, None, [plate], factors=PLATE, payment_ref="text-only")
    pid = make_payer(c, None, [other], factors=PLATE, payment_ref="text-only-trusted")
    untrusted = authorize(c, "PA-1", plate_text=plate)
    assert untrusted.outcome != ALLOW, codes(untrusted)
    assert "PLATE_TEXT_UNTRUSTED" in codes(untrusted) and untrusted.plate_llr == 0.0
    trusted = authorize(c, "PT-1", plate_text=other)
    assert trusted.outcome == ALLOW and trusted.identity_id == pid, codes(trusted)
    assert "PLATE_EXACT_MATCH" in codes(trusted)


# A stranger and the payer he most resembles among the sample faces (att_orl, a grayscale
# camera): his face scores 0.472 against the payer's one enrolled photo, below the 1:1
# threshold (0.495) but enough, with the payer's cloned plate read exactly, for the fused
# estimate to reach 1e-5. Found by searching every pair of sample faces for the payer each
# face resembles most (`bench fusion --large`'s worst-case section lists such events).
LOOK_ALIKES = [
    ("att_orl", "ORL_s05", "ORL_s05_0010.png", "ORL_s21", "ORL_s21_0001.png"),
    (
        "lfw_subset",
        "Serena_Williams",
        "Serena_Williams_0002.jpg",
        "Allyson_Felix",
        "Allyson_Felix_0001.jpg",
    ),
]


@pytest.mark.xfail(
    strict=True,
    reason="the shipped face floor (FMR 1e-4, score 0.463) is the strictest that keeps fused "
    "false rejects within budget (34/808 in bench fusion --large); these two look-alikes "
    "(0.472, 0.465) are the 2 worst-case ALLOWs of 805 it leaves (README 'Threat model')",
)
@pytest.mark.parametrize(("faces", "stranger", "photo", "payer", "enrolled"), LOOK_ALIKES)
def test_a_stranger_with_the_resembled_payers_cloned_plate_does_not_pay(
    c: Client, faces: str, stranger: str, photo: str, payer: str, enrolled: str
) -> None:
    plate = next(_plates)
    ident = c.identity.CreateIdentity(
        identity_pb2.CreateIdentityRequest(display_name=payer), metadata=c.metadata
    ).identity_id
    c.identity.EnrollFace(
        identity_pb2.EnrollFaceRequest(
            identity_id=ident,
            images=[(dataset("faces", faces, payer) / enrolled).read_bytes()],
            force=True,
        ),
        metadata=c.metadata,
    )
    c.identity.BindPlate(
        identity_pb2.BindPlateRequest(identity_id=ident, plate=plate), metadata=c.metadata
    )
    c.identity.BindPayment(
        identity_pb2.BindPaymentRequest(
            identity_id=ident, payment_ref=f"resembled-{payer}", factors=PLATE_AND_FACE
        ),
        metadata=c.metadata,
    )
    attack = (dataset("faces", faces, stranger) / photo).read_bytes()
    r = authorize(c, "PT-1", amount_minor=5000, plate_text=plate, face_image=attack)
    assert r.identity_id == ident and "PLATE_EXACT_MATCH" in codes(r)
    assert r.outcome != ALLOW, (round(r.face_score, 3), r.estimated_far, codes(r))
    assert "FACE_BELOW_FLOOR" in codes(r)
