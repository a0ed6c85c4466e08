"""Face identity end to end over real gRPC on the real models: enrol, verify, identify,
duplicates, quality, delete (really), and restart persistence."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from grpc_status import rpc_status

from recognizer.client import Client
from recognizer.service.server import RunningServer
from recognizer.v1 import identity_pb2, recognition_pb2
from tests.conftest import client_for, dataset, files_in, require_models, start_server

PEOPLE = ("Colin_Powell", "Arnold_Schwarzenegger", "Hugo_Chavez")
OUTSIDER = "Tony_Blair"


def photos(name: str) -> list[bytes]:
    return [p.read_bytes() for p in files_in(dataset("faces", "lfw10", name))]


def blank_jpeg() -> bytes:
    return cv2.imencode(".jpg", np.full((200, 200, 3), 90, np.uint8))[1].tobytes()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("identity-e2e")


# Its own server: a test restarts it on the same data directory (`again`).
@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[RunningServer]:
    require_models("default")
    running = start_server(data_dir)
    assert running.runtime.wait(180)
    yield running
    running.stop(grace=1.0)


@pytest.fixture(scope="module")
def admin(server: RunningServer) -> Iterator[Client]:
    c = client_for(server, "admin")
    yield c
    c.close()


@pytest.fixture(scope="module")
def enrolled(admin: Client) -> dict[str, str]:
    ids = {}
    for name in PEOPLE:
        ident = admin.identity.CreateIdentity(
            identity_pb2.CreateIdentityRequest(display_name=name), metadata=admin.metadata
        )
        resp = admin.identity.EnrollFace(
            identity_pb2.EnrollFaceRequest(identity_id=ident.identity_id, images=[photos(name)[0]]),
            metadata=admin.metadata,
        )
        assert len(resp.faces) == 1 and resp.faces[0].face.quality.acceptable
        ids[name] = ident.identity_id
    return ids


def identify(c: Client, image: bytes, **kw: object) -> recognition_pb2.IdentifyFaceResponse:
    return c.recognition.IdentifyFace(
        recognition_pb2.IdentifyFaceRequest(image=image, top_k=3, **kw), metadata=c.metadata
    )


def test_identify_finds_the_right_person(admin: Client, enrolled: dict[str, str]) -> None:
    for name, identity_id in enrolled.items():
        for image in photos(name)[1:4]:
            r = identify(admin, image)
            assert not r.unknown, name
            assert r.candidates[0].identity_id == identity_id
            assert r.candidates[0].display_name == name
            assert r.candidates[0].score >= r.threshold
            assert 0 < r.candidates[0].estimated_fmr < 0.01


def test_a_stranger_is_unknown_not_an_error(admin: Client, enrolled: dict[str, str]) -> None:
    for image in photos(OUTSIDER)[:3]:
        r = identify(admin, image)
        assert r.unknown and not r.candidates
        assert r.best_score < r.threshold


def test_verify_one_to_one(admin: Client, enrolled: dict[str, str]) -> None:
    same = admin.recognition.VerifyFace(
        recognition_pb2.VerifyFaceRequest(
            identity_id=enrolled[PEOPLE[0]], image=photos(PEOPLE[0])[2]
        ),
        metadata=admin.metadata,
    )
    other = admin.recognition.VerifyFace(
        recognition_pb2.VerifyFaceRequest(
            identity_id=enrolled[PEOPLE[0]], image=photos(PEOPLE[1])[2]
        ),
        metadata=admin.metadata,
    )
    assert same.match and not other.match
    assert same.score > other.score
    assert same.estimated_fmr < other.estimated_fmr


def test_threshold_override_is_bounded(admin: Client, enrolled: dict[str, str]) -> None:
    loose = identify(admin, photos(OUTSIDER)[0], threshold=0.2)
    assert loose.threshold == pytest.approx(0.2)
    with pytest.raises(grpc.RpcError) as err:
        identify(admin, photos(OUTSIDER)[0], threshold=0.01)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_duplicate_face_is_refused_unless_forced(admin: Client, enrolled: dict[str, str]) -> None:
    twin = admin.identity.CreateIdentity(
        identity_pb2.CreateIdentityRequest(display_name="twin"), metadata=admin.metadata
    )
    req = identity_pb2.EnrollFaceRequest(
        identity_id=twin.identity_id, images=[photos(PEOPLE[1])[3]]
    )
    with pytest.raises(grpc.RpcError) as err:
        admin.identity.EnrollFace(req, metadata=admin.metadata)
    assert err.value.code() is grpc.StatusCode.ALREADY_EXISTS
    assert enrolled[PEOPLE[1]] in err.value.details()
    status = rpc_status.from_call(err.value)
    assert status is not None and status.details
    assert (
        admin.identity.GetIdentity(
            identity_pb2.GetIdentityRequest(identity_id=twin.identity_id), metadata=admin.metadata
        ).face_count
        == 0
    ), "a refused enrolment stores nothing"
    req.force = True
    assert len(admin.identity.EnrollFace(req, metadata=admin.metadata).faces) == 1
    admin.identity.DeleteIdentity(
        identity_pb2.DeleteIdentityRequest(identity_id=twin.identity_id), metadata=admin.metadata
    )


def test_no_face_and_unknown_identity(admin: Client, enrolled: dict[str, str]) -> None:
    with pytest.raises(grpc.RpcError) as err:
        admin.identity.EnrollFace(
            identity_pb2.EnrollFaceRequest(identity_id=enrolled[PEOPLE[0]], images=[blank_jpeg()]),
            metadata=admin.metadata,
        )
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "images[0]" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        admin.recognition.VerifyFace(
            recognition_pb2.VerifyFaceRequest(identity_id="nope", image=photos(PEOPLE[0])[0]),
            metadata=admin.metadata,
        )
    assert err.value.code() is grpc.StatusCode.NOT_FOUND


def test_restart_keeps_identities_and_answers(
    server: RunningServer, admin: Client, enrolled: dict[str, str], data_dir: Path
) -> None:
    probes = [photos(n)[5] for n in PEOPLE] + [photos(OUTSIDER)[4]]
    before = [
        (r.unknown, [c.identity_id for c in r.candidates])
        for r in (identify(admin, p) for p in probes)
    ]
    server.stop(grace=1.0)
    again = start_server(data_dir)
    try:
        assert again.runtime.wait(180)
        c = client_for(again, "admin")
        after = [
            (r.unknown, [x.identity_id for x in r.candidates])
            for r in (identify(c, p) for p in probes)
        ]
        assert after == before
        listed = c.identity.ListIdentities(
            identity_pb2.ListIdentitiesRequest(), metadata=c.metadata
        )
        by_id = {i.identity_id: i for i in listed.identities}
        for name, identity_id in enrolled.items():
            assert by_id[identity_id].display_name == name
            assert by_id[identity_id].face_count == 1

        # Delete really deletes: rows, vectors, and searches come back unknown.
        victim = enrolled[PEOPLE[2]]
        resp = c.identity.DeleteIdentity(
            identity_pb2.DeleteIdentityRequest(identity_id=victim), metadata=c.metadata
        )
        assert resp.templates_removed == 1
        for image in photos(PEOPLE[2])[1:4]:
            r = identify(c, image)
            assert victim not in [x.identity_id for x in r.candidates]
        with pytest.raises(grpc.RpcError) as err:
            c.identity.GetIdentity(
                identity_pb2.GetIdentityRequest(identity_id=victim), metadata=c.metadata
            )
        assert err.value.code() is grpc.StatusCode.NOT_FOUND
        db = sqlite3.connect(data_dir / "recognizer.db")
        try:
            tables = [t for (t,) in db.execute("select name from sqlite_master where type='table'")]
            for table in tables:
                cols = [r[1] for r in db.execute(f"pragma table_info({table})")]
                col = (
                    "identity_id"
                    if "identity_id" in cols
                    else ("id" if table == "identities" else None)
                )
                if col and table not in ("decisions", "audit"):
                    n = db.execute(
                        f"select count(*) from {table} where {col} = ?", (victim,)
                    ).fetchone()[0]
                    assert n == 0, f"{table} still holds rows of a deleted identity"
        finally:
            db.close()
    finally:
        again.stop(grace=1.0)
