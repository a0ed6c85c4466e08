"""Issue 26 end to end: a hostile driver's and gate operator's requests through the real
Authorize RPC (a real server on 127.0.0.1 port 0, the real models, unseen sample frames).
One test per attack: an UNSPECIFIED direction where one is needed or the car is inside, an
unknown gate at amount 0 on the plate alone, currencies the policy does not charge in,
simultaneous entries of one car, and a burst that mixes a print with a live frame."""

from __future__ import annotations

import itertools
from pathlib import Path

import grpc
import pytest

from recognizer.client import Client
from recognizer.service.server import RunningServer
from recognizer.v1 import gate_pb2, identity_pb2
from tests.conftest import dataset, files_in
from tests.helpers import (
    ALLOW,
    CARS_AT_ONCE,
    DENY,
    ENTRY,
    EXIT,
    STEP_UP,
    codes,
    make_payer,
    simultaneous_entries,
    violation,
)
from tests.helpers import authorize as call
from tests.helpers import authorize_request as request
from tests.helpers import lfw_face as face

PLATE = identity_pb2.FACTOR_PLATE
# The policies are conftest's TEST_POLICIES on the shared `real_server`: entry-only E-*,
# presence P-*, small-plate-only T-*, liveness L-*, and issue 26's required R-*,
# entry-default D-* and euro EU-*. The plate_text these tests send stands for the gate's own
# reader: a gate the site trusts (issue 25; tests/test_plate_attacks_e2e.py tries the text
# against the camera).
_plates = (f"京D{n:05d}" for n in itertools.count(26000))


@pytest.fixture(scope="module")
def server(real_server: RunningServer) -> RunningServer:
    return real_server


@pytest.fixture(scope="module")
def new_server(c: Client) -> Client:
    """The policies of issue 26 (R-*, D-*, EU-*): on the same server now, by their gates."""
    return c


def refused(c: Client, req: gate_pb2.AuthorizeRequest) -> tuple[str, str]:
    """(reason, field) of an INVALID_ARGUMENT answer; fails on any other answer."""
    with pytest.raises(grpc.RpcError) as err:
        call(c, req)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    return violation(err.value)


def payer(c: Client, name: str | None, factors: int = identity_pb2.FACTOR_PLATE_AND_FACE) -> str:
    """A new car's plate, bound to a new payer with `name`'s face enrolled (None: no face)."""
    plate = next(_plates)
    make_payer(c, name, [plate], factors=factors, payment_ref=f"ref-{name or plate}")
    return plate


# --- directions ---------------------------------------------------------------------------


def test_no_direction_at_an_entry_only_gate_is_invalid_argument(c: Client) -> None:
    plate = payer(c, "Tony_Blair")
    both = {"plate_text": plate, "face_image": face("Tony_Blair", 1)}
    # The counterfactual: the same event that names its direction pays.
    assert call(c, request("E-1", direction=ENTRY, **both)).outcome == ALLOW
    assert refused(c, request("E-1", **both)) == ("DIRECTION_REQUIRED", "direction")
    assert "DIRECTION_NOT_ALLOWED" in codes(call(c, request("E-1", direction=EXIT, **both)))


def test_a_policy_may_require_a_direction_or_name_a_default(new_server: Client) -> None:
    c = new_server
    plate = payer(c, "Hugo_Chavez")
    both = {"plate_text": plate, "face_image": face("Hugo_Chavez", 1)}
    assert refused(c, request("R-1", **both)) == ("DIRECTION_REQUIRED", "direction")
    assert call(c, request("R-1", direction=EXIT, **both)).outcome == ALLOW
    # A default fills the direction in, and counts as that direction: presence follows it.
    first = call(c, request("D-1", **both))
    assert first.outcome == ALLOW, codes(first)
    again = call(c, request("D-1", **both))
    assert again.outcome == STEP_UP and "ENTRY_WITHOUT_EXIT" in codes(again), codes(again)


def test_no_direction_while_the_car_is_inside_steps_up(c: Client) -> None:
    plate = payer(c, "Vladimir_Putin")
    both = {"plate_text": plate, "face_image": face("Vladimir_Putin", 1)}
    # Without an open entry, no direction is as before (the README tour sends none).
    first = call(c, request("P-1", **both))
    assert first.outcome == ALLOW, codes(first)
    assert call(c, request("P-1", direction=ENTRY, **both)).outcome == ALLOW
    for _ in range(2):  # an event without a direction does not end the presence
        inside = call(c, request("P-1", **both))
        assert inside.outcome == STEP_UP, codes(inside)
        assert "DIRECTION_UNSPECIFIED_WHILE_PRESENT" in codes(inside)
    again = call(c, request("P-1", direction=ENTRY, **both))
    assert again.outcome == STEP_UP and "ENTRY_WITHOUT_EXIT" in codes(again), codes(again)
    # Out again: the car has left, and an event without a direction is as before.
    assert call(c, request("P-1", direction=EXIT, **both)).outcome == ALLOW
    after = call(c, request("P-1", **both))
    assert after.outcome == ALLOW, codes(after)


# --- face required means every amount -----------------------------------------------------


def test_an_unknown_gate_needs_the_face_at_amount_zero(c: Client) -> None:
    # The counterfactual: where the policy has a plate-only tier, the plate alone pays (a car
    # of its own, so that no sighting at another gate makes the next one a clone suspect).
    tier = call(c, request("T-1", plate_text=payer(c, None, PLATE), amount_minor=0))
    assert tier.outcome == ALLOW and "PLATE_ONLY_TIER" in codes(tier), codes(tier)
    plate = payer(c, None, PLATE)
    for amount in (0, 1):
        r = call(c, request("U-unknown", plate_text=plate, amount_minor=amount))
        assert r.policy_id == "default-safe"
        assert r.outcome != ALLOW and "FACE_REQUIRED" in codes(r), (amount, codes(r))
        assert not codes(r) & {"PLATE_ONLY_TIER", "PLATE_CLONE_SUSPECTED"}, codes(r)


# --- one currency per policy --------------------------------------------------------------


@pytest.mark.parametrize(
    ("currency", "why"),
    [
        ("USD", "CURRENCY_NOT_ACCEPTED"),
        ("EUR", "CURRENCY_NOT_ACCEPTED"),
        ("XXX", "NOT_ISO_4217"),
        ("cny", "NOT_ISO_4217"),
        ("CN", "NOT_ISO_4217"),
        ("\U0001f4b0", "NOT_ISO_4217"),
        ("ＣＮＹ", "NOT_ISO_4217"),  # fullwidth capitals: not ASCII
    ],
)
def test_a_currency_the_policy_does_not_charge_in_is_invalid_argument(
    c: Client, currency: str, why: str
) -> None:
    plate = next(_plates)
    req = request("T-1", plate_text=plate, currency=currency)
    assert refused(c, req) == (why, "currency")
    stored = c.admin.ListDecisions(
        gate_pb2.ListDecisionsRequest(gate_id="T-1"), metadata=c.metadata
    ).decisions
    assert req.event_id not in {d.event_id for d in stored}, "nothing is stored"


def test_the_policys_currency_or_none_is_accepted(c: Client, new_server: Client) -> None:
    plate = payer(c, None, PLATE)
    for currency in ("CNY", ""):  # "" is the policy's currency, as clients sent it before
        r = call(c, request("T-1", plate_text=plate, amount_minor=100, currency=currency))
        assert r.outcome == ALLOW, (currency, codes(r))
    euro = payer(new_server, "Colin_Powell")
    both = {"plate_text": euro, "face_image": face("Colin_Powell", 1)}
    assert call(new_server, request("EU-1", currency="EUR", **both)).outcome == ALLOW
    assert refused(new_server, request("EU-1", currency="CNY", **both)) == (
        "CURRENCY_NOT_ACCEPTED",
        "currency",
    )


# --- one car, simultaneous entries --------------------------------------------------------


def test_simultaneous_entries_of_one_car_allow_once(c: Client) -> None:
    """N entries at once give what N in turn give: the first pays, the others find the car
    inside (ENTRY_WITHOUT_EXIT). Several rounds, each with a new car."""
    for _ in range(4):
        plate = payer(c, "Colin_Powell")
        outcomes = simultaneous_entries([c], "P-race", "Colin_Powell", plate_text=plate)
        assert outcomes.count(ALLOW) == 1, outcomes
        assert outcomes.count(STEP_UP) == CARS_AT_ONCE - 1, outcomes


# --- a burst with a print -----------------------------------------------------------------

NUAA = "0001"


def nuaa(kind: str, k: int) -> bytes:
    frames: list[Path] = files_in(dataset("pad", "nuaa", kind, NUAA), "*.jpg")
    return frames[k].read_bytes()


@pytest.fixture(scope="module")
def nuaa_plate(c: Client) -> str:
    plate = next(_plates)
    ident = c.identity.CreateIdentity(
        identity_pb2.CreateIdentityRequest(display_name="NUAA 0001"), metadata=c.metadata
    ).identity_id
    c.identity.EnrollFace(
        identity_pb2.EnrollFaceRequest(
            identity_id=ident, images=[nuaa("live", k) for k in (0, 8, 16)], force=True
        ),
        metadata=c.metadata,
    )
    c.identity.BindPlate(
        identity_pb2.BindPlateRequest(identity_id=ident, plate=plate), metadata=c.metadata
    )
    c.identity.BindPayment(
        identity_pb2.BindPaymentRequest(
            identity_id=ident, payment_ref="ref-nuaa", factors=identity_pb2.FACTOR_PLATE_AND_FACE
        ),
        metadata=c.metadata,
    )
    return plate


def test_a_print_in_a_burst_with_a_live_frame_never_allows(c: Client, nuaa_plate: str) -> None:
    live, printed = nuaa("live", 30), nuaa("print", 60)
    # The counterfactuals: the live frames pay alone and together; the print alone is an
    # attack the server itself scores as one.
    both_live = call(c, request("L-1", plate_text=nuaa_plate, face_images=[live, nuaa("live", 50)]))
    assert both_live.outcome == ALLOW and "LIVENESS_PASSED" in codes(both_live)
    alone = call(c, request("L-1", plate_text=nuaa_plate, face_image=printed))
    assert alone.outcome == DENY and "PRESENTATION_ATTACK_SUSPECTED" in codes(alone)
    answers = []
    for frames in itertools.permutations([live, printed, nuaa("live", 50)]):
        r = call(c, request("L-1", plate_text=nuaa_plate, face_images=list(frames)))
        assert r.outcome == DENY and not r.payment_ref, codes(r)
        assert "PRESENTATION_ATTACK_SUSPECTED" in codes(r)
        answers.append((r.outcome, r.identity_id, round(r.face_score, 5)))
    # The order of the frames changes nothing: the same frame (the best live one) is used.
    assert len(set(answers)) == 1, answers
