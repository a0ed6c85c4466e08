"""Helpers and fakes shared by the tests (no test module imports another): sample images,
payers, gRPC answers, fakes of the engines, and the gate rules' evidence."""

from __future__ import annotations

import dataclasses
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from recognizer.client import Client
from recognizer.config import Config
from recognizer.face.types import Face, Quality, Selection
from recognizer.fusion import FusionModel, ImpostorTail, PlateEvidence, PlateModel, fit_linear_llr
from recognizer.gate.types import Binding, Direction, Evidence, Factors, Payer
from recognizer.plate.grammar import is_valid
from recognizer.plate.types import PlateCandidate, PlateResult, PlateType
from recognizer.service.runtime import Engines
from recognizer.v1 import gate_pb2, identity_pb2
from tests.conftest import DATASETS, dataset


def lfw_face(name: str, k: int) -> bytes:
    """The k-th photo of an LFW identity: one of lfw10's ten, else of lfw_subset's (grey
    photos of people no lfw10 test enrols, for a module whose 1:N search on the session server
    must find only its own payers)."""
    folder = "lfw10" if (DATASETS / "faces" / "lfw10" / name).is_dir() else "lfw_subset"
    return sorted(dataset("faces", folder, name).iterdir())[k].read_bytes()


def _scene_path(k: int) -> tuple[Path, str]:
    """The k-th CCPD frame's path and the plate its file name records."""
    from devtools.datasets import parse_ccpd_name

    path = sorted(dataset("plates", "scenes").iterdir())[k]
    truth = parse_ccpd_name(path.name)
    assert truth, f"{path.name} holds no CCPD plate record"
    return path, truth


def scene(k: int) -> tuple[bytes, str]:
    """The k-th CCPD frame and the plate its file name records."""
    path, truth = _scene_path(k)
    return path.read_bytes(), truth


def _scene_plate(k: int) -> tuple[np.ndarray, np.ndarray, str]:
    """The k-th CCPD frame decoded; its plate's corners (TL, TR, BR, BL; the file name lists
    them from the bottom right, clockwise); and the plate's text."""
    path, truth = _scene_path(k)
    br, bl, tl, tr = (np.array(p.split("&"), float) for p in path.stem.split("-")[3].split("_"))
    return cv2.imread(str(path)), np.array([tl, tr, br, bl]), truth


def _png(img: np.ndarray) -> bytes:
    """Lossless, so a test reads the same pixels wherever it runs."""
    return cv2.imencode(".png", np.ascontiguousarray(img))[1].tobytes()


def scene_without_province(k: int, cut: float = 0.13) -> tuple[bytes, str]:
    """The k-th CCPD frame with everything left of `cut` of its plate's width cut away, so the
    province glyph is out of the frame and the rest of the plate in it (a car half past the
    camera's edge); and the plate's text."""
    from devtools.synth_plates import plate_point

    img, corners, truth = _scene_plate(k)
    x = round(max(plate_point(corners, cut, 0.0)[0], plate_point(corners, cut, 1.0)[0]))
    return _png(img[:, x:]), truth


def scene_with_province_painted(k: int, width: float = 0.15) -> tuple[bytes, str]:
    """The k-th CCPD frame with the left `width` of its plate, the province glyph, painted in
    the plate's own colour (a sticker, dirt); and the plate's text."""
    from devtools.synth_plates import cover, plate_colour

    img, corners, truth = _scene_plate(k)
    return _png(cover(img, corners, (0.0, width, 0.0, 1.0), plate_colour(img, corners))), truth


def error_reason(err: grpc.RpcError) -> str:
    """The ErrorInfo reason of a failed call, or ""."""
    status = rpc_status.from_call(err)
    for d in status.details if status else ():
        if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            d.Unpack(info)
            return info.reason
    return ""


def make_payer(
    c: Client,
    name: str | None,
    plates: list[str],
    factors: int = identity_pb2.FACTOR_PLATE_AND_FACE,
    payment_ref: str = "",
) -> str:
    """An identity with the first photo of `name` (`lfw_face`) enrolled (none for name=None), the
    plates bound, and one payment binding; returns its id."""
    md = c.metadata
    ident = c.identity.CreateIdentity(
        identity_pb2.CreateIdentityRequest(display_name=name or "no face"), metadata=md
    )
    if name:
        c.identity.EnrollFace(
            identity_pb2.EnrollFaceRequest(
                identity_id=ident.identity_id, images=[lfw_face(name, 0)], force=True
            ),
            metadata=md,
        )
    for p in plates:
        c.identity.BindPlate(
            identity_pb2.BindPlateRequest(identity_id=ident.identity_id, plate=p), metadata=md
        )
    c.identity.BindPayment(
        identity_pb2.BindPaymentRequest(
            identity_id=ident.identity_id,
            payment_ref=payment_ref or f"ref-{ident.identity_id}",
            factors=factors,
        ),
        metadata=md,
    )
    return ident.identity_id


def blurred(data: bytes, sigma: float) -> bytes:
    """The photo out of focus (a frame that caught the driver moving)."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return cv2.imencode(".jpg", cv2.GaussianBlur(img, (0, 0), sigma))[1].tobytes()


# --- Authorize, end to end ------------------------------------------------------------------

ALLOW, STEP_UP, DENY = gate_pb2.OUTCOME_ALLOW, gate_pb2.OUTCOME_STEP_UP, gate_pb2.OUTCOME_DENY
ENTRY, EXIT = gate_pb2.DIRECTION_ENTRY, gate_pb2.DIRECTION_EXIT


def authorize_request(gate: str, **fields: object) -> gate_pb2.AuthorizeRequest:
    """An Authorize request with a new event id; 10.00 CNY unless `fields` say otherwise."""
    base: dict[str, object] = {
        "event_id": uuid.uuid4().hex,
        "amount_minor": 1000,
        "currency": "CNY",
    }
    base.update(fields)
    return gate_pb2.AuthorizeRequest(gate_id=gate, **base)


def authorize(c: Client, req: gate_pb2.AuthorizeRequest) -> gate_pb2.AuthorizeResponse:
    """The call as a gate makes it: told the server is busy, it retries after a short delay."""
    for _ in range(400):
        try:
            return c.gate.Authorize(req, metadata=c.metadata, timeout=120)
        except grpc.RpcError as err:
            if err.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            time.sleep(0.05)
    raise AssertionError("never admitted")


def codes(resp: gate_pb2.AuthorizeResponse) -> set[str]:
    return {r.code for r in resp.reasons}


CARS_AT_ONCE = 8


def simultaneous_entries(clients: list[Client], gate: str, name: str, **car: object) -> list[int]:
    """CARS_AT_ONCE entries of one car (`car`: its plate_text or vehicle_image) sent at once,
    spread over the clients, each with the fourth lfw10 photo of `name`; their outcomes."""
    barrier = threading.Barrier(CARS_AT_ONCE)

    def one(k: int) -> int:
        c = clients[k % len(clients)]
        req = authorize_request(gate, face_image=lfw_face(name, 3), direction=ENTRY, **car)
        barrier.wait()
        return authorize(c, req).outcome

    with ThreadPoolExecutor(CARS_AT_ONCE) as pool:
        return list(pool.map(one, range(CARS_AT_ONCE)))


def eventually(cond: Callable[[], object], seconds: float = 30.0, what: str = "") -> None:
    """Wait until `cond()` is true: a wait on a condition, never a sleep that hopes it is long
    enough; `seconds` only bounds a wait that would never end (a loaded machine is slow)."""
    end = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < end, f"not reached within {seconds} s: {what or cond}"
        time.sleep(0.005)


def wait_until_joined(thread: threading.Thread, timeout: float = 10.0) -> None:
    """Wait until `thread` is blocked on a computation in flight (a Future's result), so that a
    test exercises the join path itself rather than a caller arriving after the owner."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        frame = sys._current_frames().get(thread.ident or -1)
        while frame is not None:
            code = frame.f_code
            if code.co_name == "result" and code.co_filename.endswith("futures/_base.py"):
                return
            frame = frame.f_back
        time.sleep(0.001)
    raise AssertionError(f"{thread.name} never waited on the computation in flight")


# --- gRPC errors ------------------------------------------------------------------------


def violation(err: grpc.RpcError) -> tuple[str, str]:
    """(ErrorInfo reason, BadRequest field) of an error."""
    status = rpc_status.from_call(err)
    assert status is not None, "a rich status was expected"
    reason = field = ""
    for d in status.details:
        if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            d.Unpack(info)
            reason = info.reason
        if d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            d.Unpack(bad)
            field = bad.field_violations[0].field
    return reason, field


# --- fakes of the engines, the embedder and a plate read ------------------------------------


class FakeFaces:
    """Stands in for the face pipeline: one face, or an unexpected crash."""

    model_versions = ()

    def __init__(self, crash: bool = False) -> None:
        self.crash = crash

    def detect(self, image: np.ndarray, selection: Selection) -> list[tuple[Face, Quality]]:
        if self.crash:
            raise RuntimeError("secret internal detail")
        face = Face(np.array([1, 2, 30, 40], np.float32), np.zeros((5, 2), np.float32), 0.9)
        q = Quality(0.8, 30.0, 100.0, 0.0, 0.0, 0.0, 0.9, True, ())
        return [(face, q)]


def fake_engines(crash: bool = False):  # type: ignore[no-untyped-def]
    def factory(config: Config) -> Engines:
        return Engines(faces=FakeFaces(crash), plates=None)

    return factory


class FakeEmbedder:
    dim = 4

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.fronts: list[int] = []
        self.finished: list[int] = []

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        self.calls.append(len(crops))
        assert all(c.shape == (112, 112, 3) for c in crops)
        out = np.zeros((len(crops), self.dim), np.float32)
        out[np.arange(len(crops)), np.arange(len(crops)) % self.dim] = 1
        return out

    def front(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        self.fronts.append(len(crops))
        return 2 * self.embed(crops)  # raw, unnormalised

    def finish(self, crops: Sequence[np.ndarray], front: np.ndarray) -> np.ndarray:
        self.finished.append(len(crops))
        return front / np.linalg.norm(front, axis=1, keepdims=True)


def read(*cands: tuple[str, float], box: float = 0.0, guessed: bool = False) -> PlateResult:
    return PlateResult(
        text=cands[0][0],
        confidence=cands[0][1],
        char_confidences=(cands[0][1],) * len(cands[0][0]),
        candidates=tuple(PlateCandidate(t, p) for t, p in cands),
        box=np.full(4, box, np.float32),
        corners=np.zeros((4, 2), np.float32),
        plate_type=PlateType.BLUE,
        pattern_valid=is_valid(cands[0][0]),
        detector_score=0.9,
        reader="fake",
        province_guessed=guessed,
    )


# --- the gate rules' evidence, with a synthetic fusion model ---------------------------------

EXACT, CAND, NO, ABSENT = (
    PlateEvidence.EXACT,
    PlateEvidence.CANDIDATE,
    PlateEvidence.NO_MATCH,
    PlateEvidence.ABSENT,
)
THRESHOLD = 0.30
SURE = 0.6  # the plate-only tier's confidence bar in these tests
NOW = 1_800_000_000.0


def _fusion() -> FusionModel:
    rng = np.random.default_rng(3)
    genuine = rng.normal(0.65, 0.1, 20_000)
    impostor = rng.normal(0.05, 0.08, 20_000)
    plate = PlateModel(
        genuine={"exact": 0.93, "candidate": 0.02, "no_match": 0.05},
        misread={"exact": 0.001, "candidate": 0.001},
        clone_prior=0.05,
        sure_confidence=SURE,
    )
    return FusionModel(fit_linear_llr(genuine, impostor), ImpostorTail.fit(impostor), plate)


FUSION = _fusion()


def binding(factors: Factors = Factors.PLATE_AND_FACE, ceiling: int = 0) -> Binding:
    return Binding(f"b-{factors.value}", f"ref-{factors.value}", factors, ceiling)


def payer(
    plate: PlateEvidence = EXACT,
    face: float | None = 0.75,
    *bindings: Binding,
    searched: int = 0,
    pid: str = "payer",
) -> Payer:
    confidence = 0.9 if plate is EXACT else 0.0  # a sure exact read (above SURE)
    return Payer(pid, plate, face, searched, bindings or (binding(),), plate_confidence=confidence)


def evidence(*payers: Payer, **changes: object) -> Evidence:
    base = Evidence(
        gate_id="G-1",
        amount_minor=5000,
        direction=Direction.UNSPECIFIED,
        now=NOW,
        vehicle_sent=True,
        plate_read=True,
        face_sent=True,
        face_found=True,
        face_threshold=THRESHOLD,
        payers=payers,
        face_elsewhere=False,
        last_sighting=None,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


class Clock:
    """A clock a test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Watch:
    """A WatchDecisions stream read by a thread into a queue."""

    def __init__(self, client: Client, gate_id: str = "", after: str = "") -> None:
        self.call = client.admin.WatchDecisions(
            gate_pb2.WatchDecisionsRequest(gate_id=gate_id, after_decision_id=after),
            metadata=client.metadata,
        )
        self.call.initial_metadata()  # the server has fixed where the watch starts
        self.got: queue.Queue[Any] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for item in self.call:
                self.got.put(item.decision)
        except grpc.RpcError as exc:
            self.got.put(exc)

    def next(self) -> Any:
        return self.got.get(timeout=30.0)

    def ids(self, n: int) -> list[str]:
        return [self.next().decision_id for _ in range(n)]

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(30.0)


def authorize_scene(c: Client, gate_id: str, k: int) -> gate_pb2.AuthorizeResponse:
    """A stranger's car (the k-th scene frame) at `gate_id`, 500 CNY, event E-1."""
    frame, _ = scene(k)
    return c.gate.Authorize(
        gate_pb2.AuthorizeRequest(
            gate_id=gate_id,
            event_id="E-1",
            vehicle_image=frame,
            amount_minor=500,
            currency="CNY",
            direction=gate_pb2.DIRECTION_ENTRY,
        ),
        metadata=c.metadata,
        timeout=60,
    )


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RECOGNIZER_")}
    return subprocess.run(
        [sys.executable, "-m", "recognizer.cli", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@dataclasses.dataclass
class StoreOnly:
    """A gallery double: the servicers reach the store through it (a server with no models)."""

    store: Any

    def close(self) -> None:
        self.store.close()


def store_only(config: Config) -> Engines:
    """A runtime factory: the configured store alone, no models (`start_server`)."""
    from recognizer.store.crypto import NullCipher
    from recognizer.store.open import open_store

    return Engines(faces=None, plates=None, gallery=StoreOnly(open_store(config, NullCipher())))
