"""`bench fusion`: gate events from real faces and real plate frames, through the real
Authorize RPC, scored as plate-only, face-only and fused decisions.

Events (every image and frame is real; every read and score comes from the real models):
- genuine: an enrolled payer's own vehicle frame with another photo of the payer;
- wrong face: a payer's vehicle frame with the face of a different enrolled person;
- cloned plate: a payer's vehicle frame with the face of a person never enrolled;
- misread: an unbound vehicle whose read's alternative candidate is bound to a payer, with
  a face that is not that payer's;
- unknown: an unbound vehicle with a never-enrolled face;
- stranger, no plate: a never-enrolled face and no vehicle at all, against the whole gallery
  (the 1:N path: every third payer also holds a FACE binding, so a face alone could pay);
- payer, no plate: an enrolled payer's own face and no vehicle (reported apart: the 1:N path's
  genuine side, not part of the FRR, since a PLATE_AND_FACE binding rightly needs the plate);
- worst case (reported apart, a targeted attacker): for every genuine probe image, the payer
  it most resembles (IdentifyFace, other identities only) with that payer's own vehicle frame
  (the plate read exactly: a cloned plate). The prober's own templates are removed for its
  events (a stranger is not enrolled), then enrolled again. The section also gives worst-case
  ALLOWs and fused false rejects under each face floor (policy face_floor_fmr), computed from
  the run's own face scores: exact for floors at or above the run's own.

Plate-only accepts when the read equals a bound plate; face-only accepts when IdentifyFace
finds an enrolled payer above the default threshold; fused accepts when Authorize says ALLOW.
An ALLOW charged to a PLATE_AND_FACE binding whose bound plate was neither the read nor among
its candidates counts as a false accept, even when the payer's own face was shown: the
decision claimed a factor it did not have.
"""

from __future__ import annotations

import json
import math
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np

from benchmarks.report import (
    ROWS_NAME,
    Report,
    event_key,
    pct,
    plot_det,
    progress,
    to_jsonable,
)
from devtools.datasets import decode_file, discover_face_sets, discover_plate_sets
from devtools.metrics import wilson_ci
from recognizer.policy import FACE_FLOOR_FMR

GATE = "bench-gate-1"
POLICY = {
    "policy_id": "bench-fused-1e-5",
    "gates": ["bench-*"],
    "plate_only_max_minor": 0,
    "target_far": 1e-5,
    "track_presence": False,
}
IMPOSTOR_KINDS = ("wrong_face", "cloned_plate", "misread", "unknown", "stranger_no_plate")
KINDS = ("genuine", *IMPOSTOR_KINDS)
ASIDE_KINDS = ("payer_no_plate", "worst_case")  # reported on their own, in neither FAR nor FRR
FACE_BINDING_EVERY = 3  # every third payer also holds a FACE binding (the 1:N path)


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    person: str  # who is really there ("" for nobody enrolled)
    vehicle: Path | None  # None: no vehicle frame was sent
    face: Path

    def key(self) -> str:
        """Names the event by file names only, so runs on two machines compare."""
        car = self.vehicle.name if self.vehicle else "-"
        return f"{self.kind}|{car}|{self.face.parent.name}/{self.face.name}"


@dataclass(frozen=True, slots=True)
class Outcome:
    """One event's answer from each system: whom it would charge, and with what score."""

    event: Event
    present: str  # identity id of the person really there ("" when never enrolled)
    outcome: str  # Authorize: ALLOW / STEP_UP / DENY
    identity_id: str  # whom Authorize resolved
    plate_exact: bool
    plate_llr: float
    face_llr: float
    fused_llr: float
    estimated_far: float
    face_top1: str  # IdentifyFace's rank-1 identity above the default threshold, or ""
    face_score: float  # IdentifyFace's best score
    reasons: tuple[str, ...]
    binding: str = ""  # factors of the binding Authorize charged ("" when none)
    bound_plate_read: bool = False  # a plate bound to the charged identity was read
    gate_face_score: float = 0.0  # Authorize's face score against the payer it resolved

    @property
    def claims_missing_plate(self) -> bool:
        """ALLOW on a PLATE_AND_FACE binding without its bound plate read or a candidate."""
        return (
            self.outcome == "ALLOW"
            and self.binding == "plate_and_face"
            and not self.bound_plate_read
        )

    @property
    def via_1n(self) -> bool:
        return "FACE_IDENTIFIED_AMONG_PAYERS" in self.reasons

    def charged(self, system: str) -> str:
        """The identity this system would charge without a tap, or "" for none."""
        if system == "plate-only":
            return self.identity_id if self.plate_exact else ""
        if system == "face-only":
            return self.face_top1
        return self.identity_id if self.outcome == "ALLOW" else ""

    def score(self, system: str) -> float:
        return {"plate-only": self.plate_llr, "face-only": self.face_score}.get(
            system, self.fused_llr
        )


@dataclass(frozen=True, slots=True)
class Rate:
    errors: int
    n: int
    lo: float
    hi: float

    @property
    def value(self) -> float:
        return self.errors / self.n if self.n else float("nan")


# --large: impostor events per payer (the default is 3 other payers' faces and 2 clones).
LARGE_WRONG_FACES = 10
LARGE_CLONES = 6
LARGE_HELD = 6  # strangers: the people with the fewest photos, so the rest are probes


def rate(errors: int, n: int) -> Rate:
    lo, hi = wilson_ci(errors, n)
    return Rate(errors, n, lo, hi)


def _people(faces_root: Path, grayscale: bool = False) -> dict[str, list[Path]]:
    """Everyone with two photos or more; grayscale sets (an infrared gate camera) only when
    asked: the default bench is a colour camera."""
    people: dict[str, list[Path]] = defaultdict(list)
    for s in discover_face_sets(faces_root):
        if s.grayscale and not grayscale:
            continue
        for img in s.images:
            people[f"{s.name}/{img.identity}"].append(img.path)
    return {k: v for k, v in people.items() if len(v) >= 2}


def _vehicles(plates_root: Path) -> list[tuple[Path, str]]:
    """Real frames with their first plate; frames the server cannot decode are left out
    (the street set holds one truncated camera JPEG)."""
    out = []
    for pset in discover_plate_sets(plates_root):
        if pset.kind in ("ccpd", "street"):
            out += [(s.path, s.plates[0]) for s in pset.samples if decode_file(s.path) is not None]
    return out


def plan(
    people: dict[str, list[Path]],
    vehicles: list[tuple[Path, str]],
    *,
    seed: int = 0,
    holdout_fraction: float = 0.2,
    max_people: int | None = None,
    hold_fewest: int | None = None,
) -> tuple[dict[str, tuple[Path, str]], list[str], list[tuple[Path, str]]]:
    """Who is enrolled with which vehicle, who is held out, and the unbound vehicles.
    `hold_fewest`: hold out that many of the people with the fewest photos (so nearly every
    photo is a genuine probe), instead of a random `holdout_fraction`."""
    rng = np.random.default_rng(seed)
    names = sorted(people)
    rng.shuffle(names)
    if max_people:
        names = names[:max_people]
    if hold_fewest:
        names.sort(key=lambda n: len(people[n]))  # stable: the shuffle breaks ties
        n_hold = hold_fewest
    else:
        n_hold = max(2, int(len(names) * holdout_fraction))
    held, enrolled = names[:n_hold], names[n_hold:]
    order = list(range(len(vehicles)))
    rng.shuffle(order)
    cars = [vehicles[i] for i in order]
    owned = dict(zip(enrolled, cars, strict=False))
    unbound = cars[len(owned) :]
    return owned, held, unbound


def events_for(
    people: dict[str, list[Path]],
    owned: dict[str, tuple[Path, str]],
    held: Sequence[str],
    unbound: Sequence[tuple[Path, str]],
    misread_targets: dict[Path, str],
    *,
    seed: int = 0,
    wrong_faces: int = 3,
    clones: int = 2,
    probe_from: int = 1,
) -> list[Event]:
    """`probe_from`: a payer's photos from this index on are genuine probes (the ones before
    may be enrolled)."""
    rng = np.random.default_rng(seed + 1)
    enrolled = sorted(owned)
    out: list[Event] = []
    for person in enrolled:
        car = owned[person][0]
        first = min(probe_from, len(people[person]) - 1)
        out += [Event("genuine", person, car, face) for face in people[person][first:]]
        others = [p for p in enrolled if p != person]
        for p in rng.choice(others, size=min(wrong_faces, len(others)), replace=False):
            out.append(Event("wrong_face", str(p), car, people[str(p)][-1]))
        for p in rng.choice(held, size=min(clones, len(held)), replace=False):
            faces = people[str(p)]
            out.append(Event("cloned_plate", "", car, faces[int(rng.integers(len(faces)))]))
    for car, owner in misread_targets.items():
        others = [p for p in enrolled if p != owner]
        p = str(rng.choice(others))
        out.append(Event("misread", p, car, people[p][-1]))
    for car, _ in unbound:
        if car in misread_targets:
            continue
        p = str(rng.choice(held))
        out.append(Event("unknown", "", car, people[p][0]))
    out += [Event("stranger_no_plate", "", None, img) for p in held for img in people[p]]
    out += [
        Event(
            "payer_no_plate", person, None, people[person][min(probe_from, len(people[person]) - 1)]
        )
        for person in enrolled
    ]
    return out


@dataclass(frozen=True, slots=True)
class Settings:
    """One fusion run's choices (see :func:`run`)."""

    quick: bool = False
    profile: str = "default"
    enrol_photos: int = 1
    probe_from: int | None = None
    require_liveness: bool = False
    burst: int = 1
    large: bool = False
    face_floor_fmr: float | None = FACE_FLOOR_FMR
    worst_case: bool = True
    liveness_models: dict[str, Path] | None = None

    @property
    def start(self) -> int:
        """Genuine probes are each payer's photos from this index on."""
        return (
            self.enrol_photos
            if self.probe_from is None
            else max(self.probe_from, self.enrol_photos)
        )

    def title(self) -> str:
        variant = [f"enrolment photos: {self.enrol_photos}"]
        variant = variant if self.enrol_photos > 1 or self.probe_from else []
        variant += ["liveness required"] if self.require_liveness else []
        variant += [f"bursts of {self.burst}"] if self.burst > 1 else []
        variant += ["every face set, grayscale too"] if self.large else []
        # RESULTS.md shows several fusion runs: each title says which it is.
        extra = f", {', '.join(variant)}" if variant else ""
        return f"Fusion benchmark ({self.profile} profile{extra})"


@dataclass(frozen=True, slots=True)
class Payers:
    """The enrolled payers: identity ids, payment refs and the plates bound to each."""

    ids: dict[str, str] = field(default_factory=dict)  # person -> identity id
    refs: dict[str, str] = field(default_factory=dict)  # payment_ref -> factors
    plates_of: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    templates: dict[str, list[str]] = field(default_factory=dict)  # person -> template ids


@dataclass(frozen=True, slots=True)
class Measured:
    """What one run measured: every event's outcome (worst-case events last), the bursts'
    outcomes by event index, and the worst-case probes that had nobody to resemble."""

    outcomes: list[Outcome]
    bursts: dict[str, dict[int, Outcome]] | None
    untargeted: int


def run(
    faces_root: Path,
    plates_root: Path,
    out: Path,
    *,
    baseline: Path | None = None,
    **settings: Any,
) -> Report:
    """Measure, then write report.md and results.json. `settings` are :class:`Settings`:
    `enrol_photos`: photos per payer given to EnrollFace (at most all but one, so every
    payer keeps a genuine probe); genuine probes are the photos from `probe_from` on (default
    `enrol_photos`; set it to compare several counts on the same probes).
    `require_liveness`: the bench gate's policy requires a live face (the presentation-attack
    stage; off by default, as shipped).
    `burst` > 1: every event is also sent as bursts of that many vehicle and face frames,
    built two ways (benchmarks/bursts.py): from the photo and perturbed copies, and from
    distinct photos of the person where they have enough; both are reported beside one
    frame (the vehicle frames are perturbed copies in both: one frame per car).
    `large`: every face set, grayscale ones too (an infrared gate camera); the strangers are
    the LARGE_HELD people with the fewest photos, and each payer gets more impostor events
    (LARGE_WRONG_FACES other payers' faces, LARGE_CLONES cloned plates): the issue's 800
    genuine and 2,000 impostor events.
    `liveness_models`: {face set: liveness model file}; every Authorize of a face of that set
    is scored with that model (benchmarks/pad_folds.py: the fold model that never saw the
    set), other sets (grayscale ones) with the shipped model."""
    s = Settings(**settings)
    measured = measure(faces_root, plates_root, s)
    res = results(measured, s, faces_root, baseline)
    rep = render(res, s.title(), out)
    rep.write(out)
    return rep


def measure(faces_root: Path, plates_root: Path, s: Settings) -> Measured:
    """Every event through the real Authorize RPC of an in-process server."""
    from benchmarks.service import inprocess_running
    from recognizer.client import Client
    from recognizer.policy import PolicySet

    people = _people(faces_root, grayscale=s.large)
    owned, held, unbound = plan(
        people,
        _vehicles(plates_root),
        max_people=24 if s.quick else None,
        hold_fewest=LARGE_HELD if s.large else None,
    )
    if s.quick:
        unbound = unbound[:12]
    policy = {**POLICY, "require_liveness": s.require_liveness, "face_floor_fmr": s.face_floor_fmr}
    with inprocess_running(
        s.profile, face_threshold_min=0.2, policies=PolicySet.from_config([policy])
    ) as (running, key):
        c = Client.connect(f"127.0.0.1:{running.port}", key)
        payers = _enrol(c, people, owned, s.enrol_photos)
        owned = {p: v for p, v in owned.items() if p in payers.ids}
        misread = _bind_misreads(c, unbound, payers)
        per_payer = {"wrong_faces": LARGE_WRONG_FACES, "clones": LARGE_CLONES} if s.large else {}
        events = events_for(people, owned, held, unbound, misread, probe_from=s.start, **per_payer)
        decide: Any = _Decider(c, payers.ids, payers.refs, payers.plates_of)
        if s.liveness_models:
            decide = _FoldLiveness(decide, running.runtime.engines.faces, s.liveness_models)
        outcomes = [decide(ev) for ev in progress(events, "authorize")]
        bursts = _burst_runs(decide, events, people, s.start, s.burst) if s.burst > 1 else None
        untargeted = 0
        if s.worst_case:
            photos = {p: people[p][: min(s.enrol_photos, len(people[p]) - 1)] for p in payers.ids}
            targeted, untargeted = _worst_case_events(c, people, owned, payers.ids, s.start)
            outcomes += _worst_case_runs(c, decide, targeted, payers.ids, payers.templates, photos)
        c.close()
    return Measured(outcomes, bursts, untargeted)


def _enrol_one(c: Any, person: str, photos: Sequence[Path], plate: str) -> tuple[str, list[str]]:
    """CreateIdentity, EnrollFace and BindPlate: (identity id, template ids), or ("", [])
    when refused (no usable face, or a plate two sample frames share)."""
    from recognizer.v1 import identity_pb2

    md = c.metadata
    ident = c.identity.CreateIdentity(
        identity_pb2.CreateIdentityRequest(display_name=person), metadata=md
    )
    try:
        enrolled = c.identity.EnrollFace(
            identity_pb2.EnrollFaceRequest(
                identity_id=ident.identity_id, images=[p.read_bytes() for p in photos], force=True
            ),
            metadata=md,
        )
        c.identity.BindPlate(
            identity_pb2.BindPlateRequest(identity_id=ident.identity_id, plate=plate),
            metadata=md,
        )
    except Exception:
        c.identity.DeleteIdentity(
            identity_pb2.DeleteIdentityRequest(identity_id=ident.identity_id), metadata=md
        )
        return "", []
    return ident.identity_id, [f.template_id for f in enrolled.faces]


def _enrol(
    c: Any, people: dict[str, list[Path]], owned: dict[str, tuple[Path, str]], enrol_photos: int
) -> Payers:
    """Every owner enrolled with its plate and a PLATE_AND_FACE binding (every
    FACE_BINDING_EVERY-th payer a FACE binding too)."""
    from recognizer.v1 import identity_pb2

    payers = Payers()
    for person, (_, plate) in progress(list(owned.items()), "enrol"):
        photos = people[person][: min(enrol_photos, len(people[person]) - 1)]
        iid, templates = _enrol_one(c, person, photos, plate)
        if not iid:
            continue
        bindings = [("plate_and_face", identity_pb2.FACTOR_PLATE_AND_FACE)]
        if len(payers.ids) % FACE_BINDING_EVERY == 0:
            bindings.append(("face", identity_pb2.FACTOR_FACE))
        for name, factors in bindings:
            ref = f"{name}-{uuid.uuid4().hex[:8]}"
            c.identity.BindPayment(
                identity_pb2.BindPaymentRequest(identity_id=iid, payment_ref=ref, factors=factors),
                metadata=c.metadata,
            )
            payers.refs[ref] = name
        payers.ids[person] = iid
        payers.plates_of[iid].add(plate)
        payers.templates[person] = templates
    return payers


def _bind_misreads(c: Any, unbound: Sequence[tuple[Path, str]], payers: Payers) -> dict[Path, str]:
    """Misreads that map to another bound plate: bind an unbound car's alternative reading
    to a payer, so that car's read lands on that payer as a candidate. {car: owner}."""
    from recognizer.v1 import identity_pb2, recognition_pb2

    misread: dict[Path, str] = {}
    names = sorted(payers.ids)
    for k, (car, _) in enumerate(progress(unbound[: len(unbound) // 2], "misread")):
        r = c.recognition.ReadPlates(
            recognition_pb2.ReadPlatesRequest(image=car.read_bytes()), metadata=c.metadata
        )
        alts = [x.text for p in r.plates for x in p.candidates[1:]]
        if not alts:
            continue
        owner = names[k % len(names)]
        try:
            c.identity.BindPlate(
                identity_pb2.BindPlateRequest(identity_id=payers.ids[owner], plate=alts[0]),
                metadata=c.metadata,
            )
        except Exception:
            continue
        misread[car] = owner
        payers.plates_of[payers.ids[owner]].add(alts[0])
    return misread


# --- results: the tree results.json holds --------------------------------------------------


def results(
    measured: Measured, s: Settings, faces_root: Path, baseline: Path | None
) -> dict[str, Any]:
    """The run's results tree, typed (Outcome, Rate): what `render` reads and results.json
    holds."""
    outcomes = measured.outcomes
    res = summary(outcomes, baseline)
    res["enrolment"] = {"photos": s.enrol_photos, "probe_from": s.start}
    res["require_liveness"] = s.require_liveness
    if s.require_liveness:
        res["liveness"] = liveness_results(outcomes, s.liveness_models, faces_root)
    if measured.bursts is not None:
        res["bursts"] = burst_results(outcomes, measured.bursts, s.burst)
    if s.worst_case:
        res["worst_case"] = worst_case_results(
            outcomes, s.profile, s.face_floor_fmr, measured.untargeted
        )
    res["face_floor_fmr"] = s.face_floor_fmr
    return res


def summary(outcomes: Sequence[Outcome], baseline: Path | None = None) -> dict[str, Any]:
    """FAR and FRR per system, the model-based FAR, the 1:N path, the events that moved
    against a baseline run, and every event."""
    gen = [o for o in outcomes if o.event.kind == "genuine"]
    imp = [o for o in outcomes if o.event.kind in IMPOSTOR_KINDS]
    # An event charged through a factor it lacked is a false accept, not a success.
    claimed_gen = sum(o.claims_missing_plate for o in gen)
    systems: dict[str, Any] = {}
    for system in SYSTEMS:
        fused = system == "fused"
        wrong = sum(_accepts(o, system) or (fused and o.claims_missing_plate) for o in imp)
        extra = claimed_gen if fused else 0
        systems[system] = {
            "far": rate(wrong + extra, len(imp) + extra),
            "frr": rate(sum(not _accepts(o, system) for o in gen), len(gen)),
        }
    allowed = [o.estimated_far for o in gen if o.outcome == "ALLOW"]
    systems["model"] = {
        "max_estimated_far_of_allowed_genuine": max(allowed) if allowed else None,
        "median_estimated_far_of_allowed_genuine": float(np.median(allowed)) if allowed else None,
    }
    res: dict[str, Any] = {"systems": systems, "one_to_n": one_to_n(outcomes)}
    if baseline is not None:
        res["moved"] = moved_events(outcomes, baseline)
    res["events"] = list(outcomes)
    return res


def _worst_case_events(
    c: Any,
    people: dict[str, list[Path]],
    owned: dict[str, tuple[Path, str]],
    ids: dict[str, str],
    start: int,
) -> tuple[list[Event], int]:
    """For every genuine probe image, the payer it most resembles by the gallery's own score
    (other identities only), with that payer's vehicle frame; and how many probes had no
    other identity above the server's lowest threshold (they cannot pay)."""
    import grpc

    from recognizer.v1 import recognition_pb2

    name_of = {v: k for k, v in ids.items()}
    events, untargeted = [], 0
    for person in progress(sorted(owned), "worst case"):
        for face in people[person][start:]:
            try:
                r = c.recognition.IdentifyFace(
                    recognition_pb2.IdentifyFaceRequest(
                        image=face.read_bytes(), top_k=5, threshold=0.2
                    ),
                    metadata=c.metadata,
                )
            except grpc.RpcError:  # no face found: nobody to resemble
                untargeted += 1
                continue
            other = next((x.identity_id for x in r.candidates if x.identity_id != ids[person]), "")
            if not other:
                untargeted += 1
                continue
            events.append(Event("worst_case", person, owned[name_of[other]][0], face))
    return events, untargeted


def _worst_case_runs(
    c: Any,
    decide: _Decider,
    events: Sequence[Event],
    ids: dict[str, str],
    templates: dict[str, list[str]],
    photos: dict[str, list[Path]],
) -> list[Outcome]:
    """Each prober's events with the prober's own faces removed (an attacker is not
    enrolled, so his face cannot match himself elsewhere), then his faces enrolled again."""
    from recognizer.v1 import identity_pb2

    md = c.metadata
    by_person: dict[str, list[Event]] = defaultdict(list)
    for ev in events:
        by_person[ev.person].append(ev)
    out: list[Outcome] = []
    for person, evs in progress(list(by_person.items()), "worst case authorize"):
        pid = ids[person]
        for template in templates[person]:
            c.identity.RemoveFace(
                identity_pb2.RemoveFaceRequest(identity_id=pid, template_id=template), metadata=md
            )
        out += [decide(ev) for ev in evs]
        again = c.identity.EnrollFace(
            identity_pb2.EnrollFaceRequest(
                identity_id=pid, images=[p.read_bytes() for p in photos[person]], force=True
            ),
            metadata=md,
        )
        templates[person] = [f.template_id for f in again.faces]
    return out


def _floor_scores(profile: str) -> dict[str, float | None]:
    """The face floors compared: none, FMR 1e-4 and 1e-5 by the fusion model's impostor
    tail, and the 1:1 threshold of the face calibration."""
    from recognizer.face.calibration import FaceCalibration
    from recognizer.fusion import FusionModel
    from recognizer.models import DEFAULT_MODELS_DIR

    fusion = FusionModel.load(DEFAULT_MODELS_DIR / f"fusion_{profile}.json")
    face = FaceCalibration.load(DEFAULT_MODELS_DIR / f"face_calibration_{profile}.json")
    return {
        "none": None,
        "1e-4": fusion.face_score_at(1e-4),
        "1e-5": fusion.face_score_at(1e-5),
        "1:1 threshold": float(face.threshold),
    }


def _allowed_with_floor(o: Outcome, floor: float | None) -> bool:
    """Would this ALLOW stand under a face floor (PLATE_AND_FACE bindings only)?"""
    if o.outcome != "ALLOW":
        return False
    return floor is None or o.binding != "plate_and_face" or o.gate_face_score >= floor


def _run_floor(profile: str, fmr: float) -> float:
    from recognizer.fusion import FusionModel
    from recognizer.models import DEFAULT_MODELS_DIR

    return FusionModel.load(DEFAULT_MODELS_DIR / f"fusion_{profile}.json").face_score_at(fmr)


class _FoldLiveness:
    """A decider that scores each event's faces with its face set's liveness model: the
    in-process server's liveness stage is swapped before each call (events run one at a
    time; the product never does this)."""

    def __init__(self, decide: Callable[..., Outcome], faces: Any, models: dict[str, Path]):
        from recognizer.face.liveness import build_liveness
        from recognizer.onnx import sha256_file

        self.decide, self.faces, self.shipped = decide, faces, faces.liveness
        self.stages = {
            name: build_liveness(model_path=path, model_sha256=sha256_file(path))
            for name, path in models.items()
        }

    def __call__(self, ev: Event, *args: Any, **kwargs: Any) -> Outcome:
        self.faces.liveness = self.stages.get(face_set(ev.face), self.shipped)
        try:
            return self.decide(ev, *args, **kwargs)
        finally:
            self.faces.liveness = self.shipped


def face_set(face: Path) -> str:
    """The sample set a face photo belongs to (`<set>/<identity>/<file>`)."""
    return face.parent.parent.name


class _Decider:
    """One event through Authorize (and IdentifyFace, for the face-only system) as frames."""

    def __init__(
        self,
        c: Any,
        ids: dict[str, str],
        refs: dict[str, str],
        plates_of: dict[str, set[str]],
    ) -> None:
        self.c, self.ids, self.refs, self.plates_of = c, ids, refs, plates_of

    def __call__(
        self,
        ev: Event,
        vehicles: Sequence[bytes] | None = None,
        faces: Sequence[bytes] | None = None,
    ) -> Outcome:
        """`vehicles`/`faces`: a burst's frames; None: the event's one frame of each (sent
        in the single fields, as a previous-release gate does), with IdentifyFace."""
        from recognizer.v1 import gate_pb2, recognition_pb2

        md = self.c.metadata
        req = gate_pb2.AuthorizeRequest(
            gate_id=GATE, event_id=uuid.uuid4().hex, amount_minor=1000, currency="CNY"
        )
        single = vehicles is None and faces is None
        if single:
            req.vehicle_image = ev.vehicle.read_bytes() if ev.vehicle else b""
            req.face_image = ev.face.read_bytes()
        else:
            req.vehicle_images.extend(vehicles or [])
            req.face_images.extend(faces or [])
        resp = self.c.gate.Authorize(req, metadata=md)
        read = {resp.plate.text, *(x.text for x in resp.plate.candidates)} - {""}
        top1, best = "", 0.0
        if single:
            ident = self.c.recognition.IdentifyFace(
                recognition_pb2.IdentifyFaceRequest(image=ev.face.read_bytes(), top_k=1),
                metadata=md,
            )
            top1 = "" if ident.unknown else ident.candidates[0].identity_id
            best = ident.best_score
        codes = tuple(r.code for r in resp.reasons)
        return Outcome(
            event=ev,
            present=self.ids.get(ev.person, ""),
            outcome=gate_pb2.Outcome.Name(resp.outcome).removeprefix("OUTCOME_"),
            identity_id=resp.identity_id,
            plate_exact="PLATE_EXACT_MATCH" in codes,
            plate_llr=resp.plate_llr,
            face_llr=resp.face_llr,
            fused_llr=resp.fused_llr,
            estimated_far=resp.estimated_far,
            face_top1=top1,
            face_score=best,
            reasons=codes,
            binding=self.refs.get(resp.payment_ref, ""),
            bound_plate_read=bool(read & self.plates_of.get(resp.identity_id, set())),
            gate_face_score=resp.face_score,
        )


BURST_WAYS = ("perturbed", "photos")


def _burst_runs(
    decide: _Decider,
    events: Sequence[Event],
    people: dict[str, list[Path]],
    start: int,
    n: int,
) -> dict[str, dict[int, Outcome]]:
    """Per way of building bursts, the outcome of each event (by its index in `events`) sent
    as an n-frame burst; the photos way holds only events whose person has n photos."""
    from benchmarks.bursts import perturbed_frames, photo_frames

    folder_photos = {paths[0].parent: paths[start:] for paths in people.values()}
    out: dict[str, dict[int, Outcome]] = {way: {} for way in BURST_WAYS}
    for i, ev in enumerate(progress(list(events), f"bursts of {n}")):
        vehicles = perturbed_frames(ev.vehicle, n) if ev.vehicle else []
        out["perturbed"][i] = decide(ev, vehicles, perturbed_frames(ev.face, n))
        faces = photo_frames(ev.face, folder_photos.get(ev.face.parent, []), n)
        if faces is not None:
            out["photos"][i] = decide(ev, vehicles, faces)
    return out


def _fused_rates(outcomes: Sequence[Outcome]) -> tuple[Rate, Rate]:
    """(FAR, FRR) of the fused decision, counted as the main table counts them."""
    gen = [o for o in outcomes if o.event.kind == "genuine"]
    imp = [o for o in outcomes if o.event.kind in IMPOSTOR_KINDS]
    claimed_gen = sum(o.claims_missing_plate for o in gen)
    wrong = sum(_accepts(o, "fused") or o.claims_missing_plate for o in imp)
    far = rate(wrong + claimed_gen, len(imp) + claimed_gen)
    frr = rate(sum(not _accepts(o, "fused") for o in gen), len(gen))
    return far, frr


def _accepts(o: Outcome, system: str) -> bool:
    """Genuine: the payer present is charged, on evidence the binding really had. Impostor:
    someone else is charged."""
    charged = o.charged(system)
    if o.event.kind == "genuine":
        valid = not (system == "fused" and o.claims_missing_plate)
        return bool(charged) and charged == o.present and valid
    return bool(charged) and charged != o.present


def _score(o: Outcome, system: str) -> float:
    """DET score: the system's own score where it would charge as _accepts counts it."""
    return o.score(system) if _accepts(o, system) or not o.charged(system) else -math.inf


SYSTEMS = ("plate-only", "face-only", "fused")


def one_to_n(outcomes: Sequence[Outcome]) -> dict[str, object]:
    """Decisions where the plate named no payer and the face identified one 1:N."""
    allowed = [o for o in outcomes if o.via_1n and o.outcome == "ALLOW"]
    strangers = [o for o in outcomes if o.event.kind == "stranger_no_plate"]
    aside = [o for o in outcomes if o.event.kind == "payer_no_plate"]
    return {
        "decisions": sum(o.via_1n for o in outcomes),
        "allowed": [{"event": o.event.key(), "estimated_far": o.estimated_far} for o in allowed],
        "stranger_events": len(strangers),
        "stranger_allowed": sum(o.outcome == "ALLOW" for o in strangers),
        "payer_no_plate_events": len(aside),
        "payer_no_plate_allowed": sum(o.outcome == "ALLOW" for o in aside),
    }


def moved_events(outcomes: Sequence[Outcome], baseline: Path) -> list[dict[str, Any]]:
    """Events whose Authorize outcome differs from a baseline run's (results.json)."""
    events = json.loads(baseline.read_text(encoding="utf-8"))["results"]["events"]
    before = {event_key(e["event"]): (e["outcome"], e.get("reasons") or []) for e in events}
    moved = []
    for o in outcomes:
        old = before.get(o.event.key())
        if old is not None and old[0] != o.outcome:
            moved.append(
                {
                    "event": o.event.key(),
                    "before": old[0],
                    "after": o.outcome,
                    "reasons_before": list(old[1]),
                    "reasons_after": list(o.reasons),
                }
            )
    return moved


def liveness_results(
    outcomes: Sequence[Outcome], models: dict[str, Path] | None, faces_root: Path
) -> dict[str, Any]:
    """Which liveness model scored each face set, and the genuine events' outcomes per set:
    colour sets count in the FRR budget; grayscale ones (no colour: UNCERTAIN) apart."""
    from recognizer.onnx import OnnxModel

    grey = {s.name for s in discover_face_sets(faces_root) if s.grayscale}
    per_set = {}
    for name in sorted({face_set(o.event.face) for o in outcomes}):
        gen = [o for o in outcomes if o.event.kind == "genuine" and face_set(o.event.face) == name]
        if models and name in models:
            meta = OnnxModel(models[name], name=f"pad-without-{name}").metadata
            model = f"fold model without {name} (live from {float(meta['live_threshold']):.3f})"
        else:
            model = "shipped" + (" (no colour: UNCERTAIN)" if name in grey else "")
        per_set[name] = {
            "grayscale": name in grey,
            "model": model,
            "genuine": len(gen),
            **{k: sum(o.outcome == k for o in gen) for k in ("ALLOW", "STEP_UP", "DENY")},
            "liveness_uncertain": sum("LIVENESS_UNCERTAIN" in o.reasons for o in gen),
            "attack_suspected": sum("PRESENTATION_ATTACK_SUSPECTED" in o.reasons for o in gen),
        }
    colour = [v for v in per_set.values() if not v["grayscale"]]
    return {
        "fold_models": bool(models),
        "per_set": per_set,
        "colour_genuine_not_allowed": sum(v["genuine"] - v["ALLOW"] for v in colour),
        "colour_genuine": sum(v["genuine"] for v in colour),
    }


def burst_results(
    single: Sequence[Outcome], bursts: dict[str, dict[int, Outcome]], n: int
) -> dict[str, object]:
    """FAR and FRR of one frame and of n-frame bursts on the same events, per way."""
    rates = {}
    for way in BURST_WAYS:
        got = bursts[way]
        for label, subset in (
            ("1 frame", [single[i] for i in sorted(got)]),
            (f"{n} frames, {way}", [got[i] for i in sorted(got)]),
        ):
            far, frr = _fused_rates(subset)
            rates[f"{way}: {label}"] = {"far": far, "frr": frr}

    def disagree(o: Outcome, genuine: bool) -> bool:
        return "FACE_FRAMES_DISAGREE" in o.reasons and (not genuine or o.event.kind == "genuine")

    return {
        "frames": n,
        "rates": rates,
        "events": {w: {str(i): o for i, o in bursts[w].items()} for w in BURST_WAYS},
        "face_frames_disagree": {
            w: sum(disagree(o, False) for o in bursts[w].values()) for w in BURST_WAYS
        },
        "face_frames_disagree_genuine": {
            w: sum(disagree(o, True) for o in bursts[w].values()) for w in BURST_WAYS
        },
    }


def worst_case_results(
    outcomes: Sequence[Outcome], profile: str, run_floor_fmr: float | None, untargeted: int
) -> dict[str, object]:
    """Worst-case ALLOWs and fused false rejects under each face floor, from this run's
    own face scores (a floor weaker than the run's own is n/a: its ALLOWs are gone)."""
    worst = [o for o in outcomes if o.event.kind == "worst_case"]
    gen = [o for o in outcomes if o.event.kind == "genuine"]
    run_floor = None if run_floor_fmr is None else _run_floor(profile, run_floor_fmr)
    table = {}
    for name, floor in _floor_scores(profile).items():
        exact = run_floor is None or (floor is not None and floor >= run_floor - 1e-9)
        allows = [o for o in worst if _allowed_with_floor(o, floor)]
        rejects = sum(not _allowed_with_floor(o, floor) for o in gen)
        table[name] = {
            "score": floor,
            "worst_case_allows": len(allows) if exact else None,
            "fused_false_rejects": rejects if exact else None,
            "allowed": [o.event.key() for o in allows] if exact else [],
        }
    return {"events": len(worst), "untargeted": untargeted, "floors": table}


# --- report: Markdown from the results tree alone ------------------------------------------


def render(res: Mapping[str, Any], title: str, out: Path) -> Report:
    """The report of a results tree: a run's own, or an earlier run's rows.json (events as
    Outcome or as their JSON rows); plots are written to `out`."""
    tree = to_jsonable({k: v for k, v in res.items() if k != "events"})
    outcomes = [o if isinstance(o, Outcome) else outcome_from_row(o) for o in res["events"]]
    rep = Report(title)
    if "enrolment" in tree:
        rep.p(
            f"Enrolment: up to {tree['enrolment']['photos']} photo(s) per payer; genuine probes "
            f"from photo index {tree['enrolment']['probe_from']} on. Liveness required by the "
            f"gate policy: {'yes' if tree['require_liveness'] else 'no (as shipped)'}."
        )
    _rates_section(rep, tree["systems"], outcomes)
    _kinds_section(rep, outcomes)
    _refusals_section(rep, outcomes)
    _one_to_n_section(rep, tree["one_to_n"], outcomes)
    if "moved" in tree:
        _moved_section(rep, tree["moved"])
    _model_section(rep, tree["systems"]["model"])
    _det_section(rep, outcomes, out)
    if "liveness" in tree:
        _liveness_section(rep, tree["liveness"])
    if "bursts" in tree:
        _burst_section(rep, tree["bursts"])
    if "worst_case" in tree:
        _worst_case_section(rep, tree["worst_case"], tree.get("face_floor_fmr"), outcomes)
    rep.results = dict(res)
    return rep


def report_from_rows(path: Path, out: Path, baseline: Path | None = None) -> Report:
    """Report again an earlier run's rows.json, without measuring (`--from-results`)."""
    payload = json.loads(path.read_text(encoding="utf-8"))
    res = dict(payload["results"])
    outcomes = outcomes_from_json(path)
    res["events"] = outcomes
    if baseline is not None:
        events = res.pop("events")
        res["moved"] = moved_events(outcomes, baseline)
        res["events"] = events
    rep = render(res, payload["title"], out)
    rep.machine = payload.get("machine") or rep.machine  # where and when it was measured
    rep.write(out)
    return rep


def _rate_cells(r: Mapping[str, Any], ci: bool = True) -> list[str]:
    """errors/n, the rate and (with `ci`) its 95% interval, from a Rate's JSON form."""
    value = r["errors"] / r["n"] if r["n"] else None
    cells = [f"{r['errors']}/{r['n']}", pct(value, 2)]
    return cells + ([f"[{pct(r['lo'], 2)}, {pct(r['hi'], 2)}]"] if ci else [])


def _rates_section(rep: Report, systems: Mapping[str, Any], outcomes: Sequence[Outcome]) -> None:
    gen = [o for o in outcomes if o.event.kind == "genuine"]
    imp = [o for o in outcomes if o.event.kind in IMPOSTOR_KINDS]
    claimed = [o for o in (*gen, *imp) if o.claims_missing_plate]
    claimed_gen = sum(o.event.kind == "genuine" for o in claimed)
    rep.p(
        f"{len(gen)} genuine and {len(imp)} impostor gate events through the real Authorize "
        f"RPC ({', '.join(f'{k}: {sum(o.event.kind == k for o in outcomes)}' for k in KINDS)}). "
        "Rates are with 95% Wilson intervals; with zero errors in n events the upper limit is "
        "about 3.84/n, the most n events can show."
    )
    rep.h("FAR and FRR at the operating point")
    rep.table(
        ["decision", "false accepts", "FAR", "95% CI", "false rejects", "FRR", "95% CI"],
        [[s, *_rate_cells(systems[s]["far"]), *_rate_cells(systems[s]["frr"])] for s in SYSTEMS],
    )
    rep.p(
        f"Events ALLOWed through a PLATE_AND_FACE binding whose bound plate was not read: "
        f"{len(claimed)} ({claimed_gen} genuine, {len(claimed) - claimed_gen} "
        "impostor). The fused row counts each as a false accept, whoever was charged (a genuine "
        "one is also not a correct accept)."
    )


def _kinds_section(rep: Report, outcomes: Sequence[Outcome]) -> None:
    def accepted(o: Outcome, system: str) -> bool:
        return _accepts(o, system) or (system == "fused" and o.claims_missing_plate)

    rep.h("Impostor accepts by attack", 3)
    rows = []
    for kind in IMPOSTOR_KINDS:
        sub = [o for o in outcomes if o.event.kind == kind]
        rows.append([kind, len(sub), *(sum(accepted(o, s) for o in sub) for s in SYSTEMS)])
    rep.table(["attack", "events", *SYSTEMS], rows)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for o in outcomes:
        counts[(o.event.kind, o.outcome)] += 1
    rep.h("Authorize outcomes by event kind", 3)
    rep.table(
        ["kind", "ALLOW", "STEP_UP", "DENY"],
        [
            [k, counts[(k, "ALLOW")], counts[(k, "STEP_UP")], counts[(k, "DENY")]]
            for k in (*KINDS, *ASIDE_KINDS)
        ],
    )


# Why a genuine event was refused, first match wins: which factor an engineer must improve
# (the reader, the liveness model, the face model) to turn it into a correct ALLOW.
REFUSAL_CAUSES = {
    "charged wrongly": "ALLOW, but not to the payer present or not on its bound plate",
    "plate": "the plate read names the payer neither exactly nor as a candidate (a misread)",
    "liveness": "the liveness the policy requires was not LIVE",
    "face floor": "the face below the policy's face floor (FACE_BELOW_FLOOR)",
    "face": "the face, with what the plate gave, short of the fused target (threshold, FAR)",
}


def refusal_cause(o: Outcome) -> str:
    """The :data:`REFUSAL_CAUSES` key of a genuine event the fused decision refused."""
    reasons = set(o.reasons)
    if o.outcome == "ALLOW":
        return "charged wrongly"
    if not reasons & {"PLATE_EXACT_MATCH", "PLATE_CANDIDATE_MATCH"}:
        return "plate"
    if reasons & {"LIVENESS_UNCERTAIN", "PRESENTATION_ATTACK_SUSPECTED"}:
        return "liveness"
    return "face floor" if "FACE_BELOW_FLOOR" in reasons else "face"


def _refusals_section(rep: Report, outcomes: Sequence[Outcome]) -> None:
    refused = [o for o in outcomes if o.event.kind == "genuine" and not _accepts(o, "fused")]
    by_cause: dict[str, list[Outcome]] = defaultdict(list)
    for o in refused:
        by_cause[refusal_cause(o)].append(o)
    rep.h("Genuine events refused, by cause", 3)
    rep.table(
        ["cause", "events", "vehicle frames", "people", "what it means"],
        [
            [cause, len(sub), len({o.event.vehicle for o in sub}),
             len({o.event.person for o in sub}), meaning]
            for cause, meaning in REFUSAL_CAUSES.items()
            if (sub := by_cause.get(cause))
        ] or [["-", 0, 0, 0, "no genuine event refused"]],
    )  # fmt: skip
    plates: dict[str, int] = defaultdict(int)
    for o in by_cause.get("plate", []):
        plates[o.event.vehicle.name if o.event.vehicle else "-"] += 1
    if plates:
        rep.p(
            "Vehicle frames behind the plate refusals (events each): "
            + ", ".join(f"`{name}` {n}" for name, n in sorted(plates.items()))
            + ". A frame serves every probe of its payer, so one misread frame refuses several "
            "events."
        )


def _one_to_n_section(rep: Report, res: Mapping[str, Any], outcomes: Sequence[Outcome]) -> None:
    allowed = res["allowed"]
    fars = [a["estimated_far"] for a in allowed]
    aside_step_up = sum(
        o.event.kind == "payer_no_plate" and o.outcome == "STEP_UP" for o in outcomes
    )
    rep.h("The 1:N path", 3)
    rep.p(
        f"{res['decisions']} decisions identified the payer 1:N (the plate named nobody); "
        f"{len(allowed)} of them were ALLOWed"
        + (f", with estimated FAR {', '.join(f'{far:.2e}' for far in fars)}" if allowed else "")
        + f". Strangers' faces with no plate against the whole gallery: "
        f"{res['stranger_events']} events, {res['stranger_allowed']} ALLOWed. Payers' own faces "
        f"with no plate: {res['payer_no_plate_events']} events, "
        f"{res['payer_no_plate_allowed']} ALLOWed, {aside_step_up} STEP_UP."
    )


def _moved_section(rep: Report, moved: Sequence[Mapping[str, Any]]) -> None:
    rep.h("Events that moved against the baseline run", 3)
    counts: dict[tuple[str, str, str], int] = defaultdict(int)
    for m in moved:
        counts[(m["event"].split("|")[0], m["before"], m["after"])] += 1
    rep.table(
        ["kind", "before", "after", "events"],
        [[k, b, a, n] for (k, b, a), n in sorted(counts.items())],
    )
    rep.p(f"{len(moved)} events moved; each with its reasons is in results.json (`moved`).")


def _model_section(rep: Report, model: Mapping[str, Any]) -> None:
    rep.h("Model-based FAR")
    rep.p(
        "Authorize ALLOWs only when the fused LLR gives an estimated false-accept probability "
        "at or below the policy target (1e-5). That estimate combines the calibrated plate "
        "impostor rates (clone prior x the reader's genuine rate + the measured misread rate, "
        "per category) with the face impostor tail: per population group, empirical while "
        "at least 25 impostor scores lie above, beyond a conservative exponential upper tail, "
        "the heaviest group's rate times the margin chosen by leaving each group out (`bench "
        "calibration`); k enrolled faces give an impostor k tries; for a payer identified "
        "1:N, the best of N impostors, with no comparison rarer than 1/(n+1). "
        f"Allowed genuine events had estimated FAR median "
        f"{model['median_estimated_far_of_allowed_genuine']} and max "
        f"{model['max_estimated_far_of_allowed_genuine']}."
    )


def _det_section(rep: Report, outcomes: Sequence[Outcome], out: Path) -> None:
    gen = [o for o in outcomes if o.event.kind == "genuine"]
    imp = [o for o in outcomes if o.event.kind in IMPOSTOR_KINDS]
    curves = {}
    for system in SYSTEMS:
        g = np.array([_score(o, system) for o in gen], np.float64)
        i = np.array([_score(o, system) for o in imp], np.float64)
        lo = np.nanmin(np.concatenate([g[np.isfinite(g)], i[np.isfinite(i)], [0.0]])) - 1
        curves[system] = (np.where(np.isfinite(g), g, lo), np.where(np.isfinite(i), i, lo))
    out.mkdir(parents=True, exist_ok=True)
    rep.image(plot_det(out / "fusion_det.png", curves, "Gate decisions: DET"), "DET")


def _liveness_section(rep: Report, res: Mapping[str, Any]) -> None:
    rep.h("Liveness by face set", 3)
    rep.p(
        "Genuine events per face set, liveness required. "
        + (
            "Each colour set's faces are scored by the liveness fold model trained without "
            "that set (benchmarks/pad_folds.py, the shipped recipe), so no face was seen in "
            "training. "
            if res["fold_models"]
            else "Every face is scored by the shipped model, which saw the colour sets in "
            "training (flattering). "
        )
        + "Grayscale sets carry no colour: liveness is UNCERTAIN and the gate STEP_UPs them; "
        "they are reported here, apart from the colour sets."
    )
    rep.table(
        ["set", "camera", "liveness model", "genuine", "ALLOW", "STEP_UP", "DENY",
         "LIVENESS_UNCERTAIN", "attack suspected"],
        [
            [name, "grey" if v["grayscale"] else "colour", v["model"], v["genuine"], v["ALLOW"],
             v["STEP_UP"], v["DENY"], v["liveness_uncertain"], v["attack_suspected"]]
            for name, v in res["per_set"].items()
        ],
    )  # fmt: skip


def _burst_section(rep: Report, res: Mapping[str, Any]) -> None:
    n = res["frames"]
    rep.h(f"Bursts of {n} frames")
    rep.p(
        f"Every event again as a burst of {n} vehicle and {n} face frames through Authorize's "
        "repeated fields. Perturbed: the event's photo and frame, then seeded perturbed copies "
        "(blur, a shift and crop of up to 4% a side, brightness, JPEG at quality 60-90); this "
        "understates video frames, whose flaws differ more. Photos: the face frames are the "
        "person's distinct photos (the probe, then the next ones, enrolled photos left out), "
        "only for people with enough; this overstates video frames. The vehicle frames are "
        "perturbed copies in both (one frame per car). One frame is shown on the same events."
    )
    rep.table(
        ["events", "false rejects", "FRR", "95% CI", "false accepts", "FAR"],
        [
            [f"{label.replace(': ', ' events: ', 1)}",
             *_rate_cells(r["frr"]), *_rate_cells(r["far"], ci=False)]
            for label, r in res["rates"].items()
        ],
    )  # fmt: skip
    disagree, genuine = res["face_frames_disagree"], res["face_frames_disagree_genuine"]
    rep.p(
        "Bursts whose face frames disagreed (FACE_FRAMES_DISAGREE, never ALLOW): "
        + ", ".join(f"{w} {disagree[w]} ({genuine[w]} genuine)" for w in BURST_WAYS)
        + "."
    )


def _worst_case_section(
    rep: Report, res: Mapping[str, Any], run_floor_fmr: float | None, outcomes: Sequence[Outcome]
) -> None:
    worst, gen = res["events"], sum(o.event.kind == "genuine" for o in outcomes)
    rep.h("Worst-case impostors: the payer each probe resembles most, with the payer's plate", 3)
    rep.p(
        f"{worst} events, one per genuine probe image with another identity above the "
        f"server's lowest threshold ({res['untargeted']} probes had none). Each shows the "
        "payer's own vehicle frame (a cloned plate, read exactly) and the probe's face; the "
        "prober's own faces are removed for these events. This run's face floor: "
        f"{'none' if run_floor_fmr is None else f'FMR {run_floor_fmr:.0e}'}; rows below the "
        "run's floor are n/a (rerun with --face-floor-fmr none)."
    )
    rep.table(
        ["face floor", "score", "worst-case ALLOWs", "fused false rejects"],
        [
            [name, "-" if f["score"] is None else f"{f['score']:.3f}",
             "n/a" if f["worst_case_allows"] is None else f"{f['worst_case_allows']}/{worst}",
             "n/a" if f["fused_false_rejects"] is None else f"{f['fused_false_rejects']}/{gen}"]
            for name, f in res["floors"].items()
        ],
    )  # fmt: skip
    for o in outcomes:
        if o.event.kind == "worst_case" and o.outcome == "ALLOW":
            rep.p(
                f"ALLOWed: `{o.event.key()}` face {o.gate_face_score:.3f}, "
                f"est. FAR {o.estimated_far:.2e}, {', '.join(o.reasons)}"
            )


def outcome_from_row(row: Mapping[str, Any]) -> Outcome:
    """One event's Outcome from its JSON row (rows.json)."""
    e = dict(row)
    ev = e.pop("event")
    if not isinstance(ev, dict):
        raise click.ClickException(
            f"a summary (events by id only): report again from the run's {ROWS_NAME}"
        )
    vehicle = Path(ev["vehicle"]) if ev["vehicle"] else None
    event = Event(ev["kind"], ev["person"], vehicle, Path(ev["face"]))
    return Outcome(event=event, **{**e, "reasons": tuple(e["reasons"])})


def outcomes_from_json(path: Path) -> list[Outcome]:
    """The events of an earlier run's rows.json (or a results.json from before results were
    summaries), to report them again."""
    events = json.loads(path.read_text(encoding="utf-8"))["results"]["events"]
    try:
        return [outcome_from_row(e) for e in events]
    except click.ClickException as exc:
        raise click.ClickException(f"{path}: {exc.message}, beside it") from None
