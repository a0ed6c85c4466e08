"""`bench fusion`: gate events from real faces and real plate frames, through the real
Authorize RPC, scored as plate-only, face-only and fused decisions.

Events (every image and frame is real; every read and score comes from the real models):
- genuine: an enrolled payer's own vehicle frame with another photo of the payer;
- wrong face: a payer's vehicle frame with the face of a different enrolled person;
- cloned plate: a payer's vehicle frame with the face of a person never enrolled;
- misread: an unbound vehicle whose read's alternative candidate is bound to a payer, with
  a face that is not that payer's;
- unknown: an unbound vehicle with a never-enrolled face.

Plate-only accepts when the read equals a bound plate; face-only accepts when IdentifyFace
finds an enrolled payer above the default threshold; fused accepts when Authorize says ALLOW.
"""

from __future__ import annotations

import math
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.faces import discover_face_sets
from benchmarks.metrics import wilson_ci
from benchmarks.plates import discover_plate_sets
from benchmarks.report import Report, decode_file, pct, plot_det, progress

GATE = "bench-gate-1"
POLICY = {
    "policy_id": "bench-fused-1e-5",
    "gates": ["bench-*"],
    "plate_only_max_minor": 0,
    "target_far": 1e-5,
    "track_presence": False,
}
KINDS = ("genuine", "wrong_face", "cloned_plate", "misread", "unknown")


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    person: str  # who is really there ("" for nobody enrolled)
    vehicle: Path
    face: Path


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


def rate(errors: int, n: int) -> Rate:
    lo, hi = wilson_ci(errors, n)
    return Rate(errors, n, lo, hi)


def _people(faces_root: Path) -> dict[str, list[Path]]:
    people: dict[str, list[Path]] = defaultdict(list)
    for s in discover_face_sets(faces_root):
        if s.grayscale:
            continue  # colour camera at the gate; grayscale sets are reported elsewhere
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
) -> tuple[dict[str, tuple[Path, str]], list[str], list[tuple[Path, str]]]:
    """Who is enrolled with which vehicle, who is held out, and the unbound vehicles."""
    rng = np.random.default_rng(seed)
    names = sorted(people)
    rng.shuffle(names)
    if max_people:
        names = names[:max_people]
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
) -> list[Event]:
    rng = np.random.default_rng(seed + 1)
    enrolled = sorted(owned)
    out: list[Event] = []
    for person in enrolled:
        car = owned[person][0]
        out += [Event("genuine", person, car, face) for face in people[person][1:]]
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
    return out


def run(
    faces_root: Path, plates_root: Path, out: Path, *, quick: bool = False, profile: str = "default"
) -> Report:
    from benchmarks.service import inprocess_server
    from recognizer.client import Client
    from recognizer.policy import PolicySet
    from recognizer.v1 import gate_pb2, identity_pb2, recognition_pb2

    people = _people(faces_root)
    vehicles = _vehicles(plates_root)
    owned, held, unbound = plan(people, vehicles, max_people=24 if quick else None)
    if quick:
        unbound = unbound[:12]
    with inprocess_server(
        profile, face_threshold_min=0.2, policies=PolicySet.from_config([POLICY])
    ) as (port, key):
        c = Client.connect(f"127.0.0.1:{port}", key)
        md = c.metadata
        ids: dict[str, str] = {}
        for person, (_, plate) in progress(list(owned.items()), "enrol"):
            ident = c.identity.CreateIdentity(
                identity_pb2.CreateIdentityRequest(display_name=person), metadata=md
            )
            try:
                c.identity.EnrollFace(
                    identity_pb2.EnrollFaceRequest(
                        identity_id=ident.identity_id,
                        images=[people[person][0].read_bytes()],
                        force=True,
                    ),
                    metadata=md,
                )
                c.identity.BindPlate(
                    identity_pb2.BindPlateRequest(identity_id=ident.identity_id, plate=plate),
                    metadata=md,
                )
            except Exception:  # no usable face, or a plate two sample frames share
                c.identity.DeleteIdentity(
                    identity_pb2.DeleteIdentityRequest(identity_id=ident.identity_id),
                    metadata=md,
                )
                continue
            c.identity.BindPayment(
                identity_pb2.BindPaymentRequest(
                    identity_id=ident.identity_id,
                    payment_ref=f"pay-{uuid.uuid4().hex[:8]}",
                    factors=identity_pb2.FACTOR_PLATE_AND_FACE,
                ),
                metadata=md,
            )
            ids[person] = ident.identity_id
        owned = {p: v for p, v in owned.items() if p in ids}
        # Misreads that map to another bound plate: bind an unbound car's alternative
        # reading to a payer, so that car's read lands on that payer as a candidate.
        misread: dict[Path, str] = {}
        payers = sorted(ids)
        for k, (car, _) in enumerate(progress(unbound[: len(unbound) // 2], "misread")):
            r = c.recognition.ReadPlates(
                recognition_pb2.ReadPlatesRequest(image=car.read_bytes()), metadata=md
            )
            alts = [x.text for p in r.plates for x in p.candidates[1:]]
            if not alts:
                continue
            owner = payers[k % len(payers)]
            try:
                c.identity.BindPlate(
                    identity_pb2.BindPlateRequest(identity_id=ids[owner], plate=alts[0]),
                    metadata=md,
                )
            except Exception:
                continue
            misread[car] = owner
        events = events_for(people, owned, held, unbound, misread)
        outcomes = []
        for ev in progress(events, "authorize"):
            resp = c.gate.Authorize(
                gate_pb2.AuthorizeRequest(
                    gate_id=GATE,
                    event_id=uuid.uuid4().hex,
                    vehicle_image=ev.vehicle.read_bytes(),
                    face_image=ev.face.read_bytes(),
                    amount_minor=1000,
                    currency="CNY",
                ),
                metadata=md,
            )
            ident = c.recognition.IdentifyFace(
                recognition_pb2.IdentifyFaceRequest(image=ev.face.read_bytes(), top_k=1),
                metadata=md,
            )
            codes = tuple(r.code for r in resp.reasons)
            outcomes.append(
                Outcome(
                    event=ev,
                    present=ids.get(ev.person, ""),
                    outcome=gate_pb2.Outcome.Name(resp.outcome).removeprefix("OUTCOME_"),
                    identity_id=resp.identity_id,
                    plate_exact="PLATE_EXACT_MATCH" in codes,
                    plate_llr=resp.plate_llr,
                    face_llr=resp.face_llr,
                    fused_llr=resp.fused_llr,
                    estimated_far=resp.estimated_far,
                    face_top1="" if ident.unknown else ident.candidates[0].identity_id,
                    face_score=ident.best_score,
                    reasons=codes,
                )
            )
        c.close()
    return report(outcomes, out, profile)


def _accepts(o: Outcome, system: str) -> bool:
    """Genuine: the payer present is charged. Impostor: someone else is charged."""
    charged = o.charged(system)
    if o.event.kind == "genuine":
        return bool(charged) and charged == o.present
    return bool(charged) and charged != o.present


def _score(o: Outcome, system: str) -> float:
    """DET score: the system's own score where it would charge as _accepts counts it."""
    return o.score(system) if _accepts(o, system) or not o.charged(system) else -math.inf


SYSTEMS = ("plate-only", "face-only", "fused")


def report(outcomes: Sequence[Outcome], out: Path, profile: str) -> Report:
    rep = Report(f"Fusion benchmark ({profile} profile)")
    gen = [o for o in outcomes if o.event.kind == "genuine"]
    imp = [o for o in outcomes if o.event.kind != "genuine"]
    rep.p(
        f"{len(gen)} genuine and {len(imp)} impostor gate events through the real Authorize "
        f"RPC ({', '.join(f'{k}: {sum(o.event.kind == k for o in outcomes)}' for k in KINDS)}). "
        "Rates are with 95% Wilson intervals; with zero errors in n events the upper limit is "
        "about 3.84/n, the most n events can show."
    )
    rows, results = [], {}
    for system in SYSTEMS:
        fa = rate(sum(_accepts(o, system) for o in imp), len(imp))
        fr = rate(sum(not _accepts(o, system) for o in gen), len(gen))
        results[system] = {"far": fa, "frr": fr}
        rows.append(
            [
                system,
                f"{fa.errors}/{fa.n}",
                pct(fa.value, 2),
                f"[{pct(fa.lo, 2)}, {pct(fa.hi, 2)}]",
                f"{fr.errors}/{fr.n}",
                pct(fr.value, 2),
                f"[{pct(fr.lo, 2)}, {pct(fr.hi, 2)}]",
            ]
        )
    rep.h("FAR and FRR at the operating point")
    rep.table(
        ["decision", "false accepts", "FAR", "95% CI", "false rejects", "FRR", "95% CI"], rows
    )
    by_kind = []
    for kind in KINDS[1:]:
        sub = [o for o in imp if o.event.kind == kind]
        by_kind.append([kind, len(sub)] + [sum(_accepts(o, s) for o in sub) for s in SYSTEMS])
    rep.h("Impostor accepts by attack", 3)
    rep.table(["attack", "events", *SYSTEMS], by_kind)
    outcomes_tbl = defaultdict(int)
    for o in outcomes:
        outcomes_tbl[(o.event.kind, o.outcome)] += 1
    rep.h("Authorize outcomes by event kind", 3)
    rep.table(
        ["kind", "ALLOW", "STEP_UP", "DENY"],
        [
            [k, outcomes_tbl[(k, "ALLOW")], outcomes_tbl[(k, "STEP_UP")], outcomes_tbl[(k, "DENY")]]
            for k in KINDS
        ],
    )
    allowed = [o.estimated_far for o in gen if o.outcome == "ALLOW"]
    results["model"] = {
        "max_estimated_far_of_allowed_genuine": max(allowed) if allowed else None,
        "median_estimated_far_of_allowed_genuine": float(np.median(allowed)) if allowed else None,
    }
    rep.h("Model-based FAR (score-level extrapolation)")
    rep.p(
        "Authorize ALLOWs only when the fused LLR gives an estimated false-accept probability "
        "at or below the policy target (1e-5). That estimate multiplies the calibrated plate "
        "impostor rate (clone prior + measured misreads) with the face impostor tail: "
        "empirical while at least 10 impostor scores lie above, a Gaussian fit beyond. "
        f"Allowed genuine events had estimated FAR median "
        f"{results['model']['median_estimated_far_of_allowed_genuine']} and max "
        f"{results['model']['max_estimated_far_of_allowed_genuine']}."
    )
    curves = {}
    for system in SYSTEMS:
        g = np.array([_score(o, system) for o in gen], np.float64)
        i = np.array([_score(o, system) for o in imp], np.float64)
        lo = np.nanmin(np.concatenate([g[np.isfinite(g)], i[np.isfinite(i)], [0.0]])) - 1
        curves[system] = (np.where(np.isfinite(g), g, lo), np.where(np.isfinite(i), i, lo))
    out.mkdir(parents=True, exist_ok=True)
    rep.image(plot_det(out / "fusion_det.png", curves, "Gate decisions: DET"), "DET")
    rep.results = {"systems": results, "events": list(outcomes)}
    rep.write(out)
    return rep
