"""Hostile input against one in-process server on the real models.

Random bytes, truncated and bit-flipped JPEG/PNG made from a real photo, decompression
bombs, extreme sizes, odd pixel formats, an oversized message, out-of-range numbers and
unknown enum values, sent to every RPC that takes untrusted input. Every answer must be OK
or a clean client-side status, never INTERNAL/UNKNOWN and never a stack trace; afterwards
the server is still SERVING and its memory is bounded.

Requests go through a generic byte-level stub (`channel.unary_unary` with identity
serialisers), so the same path also carries hand-built wire messages (invalid UTF-8).
"""

from __future__ import annotations

import struct
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import cv2
import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from recognizer.api import API_KEY_HEADER
from recognizer.service.server import RunningServer
from recognizer.v1 import gate_pb2, identity_pb2, recognition_pb2
from tests.conftest import KEYS, dataset, require_models, start_server

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
GiB = 1 << 30
MiB = 1 << 20
RPC_TIMEOUT = 120.0

SERVICES = {
    "DetectFaces": ("RecognitionService", recognition_pb2.DetectFacesRequest),
    "ReadPlates": ("RecognitionService", recognition_pb2.ReadPlatesRequest),
    "IdentifyFace": ("RecognitionService", recognition_pb2.IdentifyFaceRequest),
    "VerifyFace": ("RecognitionService", recognition_pb2.VerifyFaceRequest),
    "EnrollFace": ("IdentityService", identity_pb2.EnrollFaceRequest),
    "CreateIdentity": ("IdentityService", identity_pb2.CreateIdentityRequest),
    "BindPayment": ("IdentityService", identity_pb2.BindPaymentRequest),
    "Authorize": ("GateService", gate_pb2.AuthorizeRequest),
}


def path_of(method: str) -> str:
    return f"/recognizer.v1.{SERVICES[method][0]}/{method}"


# --- sample images and hostile variants ----------------------------------------------------


def _encode(ext: str, image: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, image, params or [])
    assert ok
    return buf.tobytes()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_raw(width: int, height: int, color_type: int, idat: bytes, depth: int = 8) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def with_png_size(png: bytes, width: int, height: int) -> bytes:
    """The same PNG with its IHDR (and CRC) claiming another size."""
    ihdr = bytearray(png[8 + 8 : 8 + 8 + 13])
    ihdr[0:8] = struct.pack(">II", width, height)
    return png[:8] + _chunk(b"IHDR", bytes(ihdr)) + png[8 + 25 :]


def with_jpeg_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The same JPEG with its start-of-frame claiming another size."""
    data = bytearray(jpeg)
    i = 2
    while i + 4 <= len(data):
        marker = data[i + 1]
        seg = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5 : i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + seg
    raise AssertionError("no SOF in the sample JPEG")


@dataclass(frozen=True)
class Samples:
    jpeg: bytes  # a real lfw10 photo
    png: bytes
    plate_frame: bytes
    special: tuple[tuple[str, bytes], ...]  # named hostile or unusual images


@cache
def samples() -> Samples:
    photo_path = sorted(dataset("faces", "lfw10", "Colin_Powell").iterdir())[0]
    jpeg = photo_path.read_bytes()
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    png = _encode(".png", image)
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    frames = sorted(dataset("plates", "scenes").iterdir())
    special = [
        ("photo.jpg", jpeg),
        ("photo.png", png),
        ("photo.webp", _encode(".webp", image)),
        ("gray.png", _encode(".png", gray)),
        ("gray.jpg", _encode(".jpg", gray)),
        ("rgb16.png", _encode(".png", image.astype(np.uint16) * 257)),
        ("gray16.png", _encode(".png", gray.astype(np.uint16) * 257)),
        ("bgra.png", _encode(".png", cv2.cvtColor(image, cv2.COLOR_BGR2BGRA))),
        ("progressive.jpg", _encode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])),
        ("1x1.png", _encode(".png", np.zeros((1, 1, 3), np.uint8))),
        ("1x1.jpg", _encode(".jpg", np.zeros((1, 1, 3), np.uint8))),
        ("8x8.png", _encode(".png", np.full((8, 8, 3), 200, np.uint8))),
        ("20000x20.png", _encode(".png", np.full((20, 20000, 3), 90, np.uint8))),
        ("20x20000.png", _encode(".png", np.full((20000, 20, 3), 90, np.uint8))),
        ("11000x20.jpg", _encode(".jpg", np.full((20, 11000, 3), 90, np.uint8))),
        ("png-declares-60000x60000", with_png_size(png, 60000, 60000)),
        ("png-declares-1x1", with_png_size(png, 1, 1)),
        ("png-declares-other", with_png_size(png, 300, 200)),
        ("jpeg-sof-65000x65000", with_jpeg_size(jpeg, 65000, 65000)),
        ("jpeg-sof-0x0", with_jpeg_size(jpeg, 0, 0)),
        ("jpeg-sof-smaller", with_jpeg_size(jpeg, 100, 100)),
        # zlib bombs: tiny files that inflate to tens or hundreds of MB.
        (
            "png-bomb-6000x6000-gray",  # 36 Mpx: under the pixel limit, so it is decoded
            png_raw(6000, 6000, 0, zlib.compress(b"\x00" * (6001 * 6000), 9)),
        ),
        (
            "png-bomb-30000x30000",  # declared beyond every limit
            png_raw(30000, 30000, 2, zlib.compress(b"\x00" * (8 * MiB), 9)),
        ),
        (
            "png-bomb-64x64-inflates-256MB",  # the header is small; the stream is not
            png_raw(64, 64, 2, zlib.compress(b"\x00" * (256 * MiB), 9)),
        ),
        ("png-signature-only", b"\x89PNG\r\n\x1a\n"),
        ("jpeg-soi-only", b"\xff\xd8\xff"),
        ("riff-webp-garbage", b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 32),
        ("empty", b""),
    ]
    return Samples(jpeg, png, frames[0].read_bytes(), tuple(special))


# --- the server and a byte-level caller ----------------------------------------------------


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str


@dataclass
class Fuzzer:
    server: RunningServer
    channel: grpc.Channel
    identity_id: str
    plate: str
    cases: int = 0
    crashes: list[str] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)
    baseline_rss: int = 0
    peak_rss: int = 0

    def call(self, method: str, body: bytes, record: bool = True) -> Outcome:
        fn = self.channel.unary_unary(
            path_of(method),
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        try:
            fn(body, metadata=((API_KEY_HEADER, KEYS["admin"]),), timeout=RPC_TIMEOUT)
            out = Outcome(grpc.StatusCode.OK, "")
        except grpc.RpcError as err:
            out = Outcome(err.code(), err.details() or "")
        if not record:
            return out
        self.cases += 1
        self.codes[out.code.name] = self.codes.get(out.code.name, 0) + 1
        if out.code not in ALLOWED or "Traceback" in out.details:
            self.crashes.append(f"{method}: {out.code.name} {out.details[:200]}")
        if self.cases % 100 == 0:
            self.sample_rss()
        return out

    def rss(self) -> int:
        fn = self.channel.unary_unary(
            "/recognizer.v1.AdminService/GetMetrics",
            request_serializer=lambda b: b,
            response_deserializer=gate_pb2.GetMetricsResponse.FromString,
        )
        r = fn(b"", metadata=((API_KEY_HEADER, KEYS["admin"]),), timeout=30)
        return int(r.rss_bytes)

    def sample_rss(self) -> int:
        rss = self.rss()
        self.peak_rss = max(self.peak_rss, rss)
        return rss

    def health(self) -> str:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        resp = health_pb2_grpc.HealthStub(self.channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


# Its own server: the fuzzer sends arbitrary admin calls, and it measures the process's memory.
@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzer]:
    require_models("default")
    s = samples()
    running = start_server(tmp_path_factory.mktemp("fuzz"))
    channel = grpc.insecure_channel(
        f"127.0.0.1:{running.port}",
        options=[
            ("grpc.max_send_message_length", 64 * MiB),
            ("grpc.max_receive_message_length", 64 * MiB),
        ],
    )
    try:
        assert running.runtime.wait(180), "models failed to load"
        md = ((API_KEY_HEADER, KEYS["admin"]),)
        from recognizer.v1 import identity_pb2_grpc

        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        ident = stub.CreateIdentity(
            identity_pb2.CreateIdentityRequest(display_name="fuzz-target"), metadata=md
        )
        stub.EnrollFace(
            identity_pb2.EnrollFaceRequest(identity_id=ident.identity_id, images=[s.jpeg]),
            metadata=md,
        )
        plate = stub.BindPlate(
            identity_pb2.BindPlateRequest(identity_id=ident.identity_id, plate="京A77777"),
            metadata=md,
        ).plate
        stub.BindPayment(
            identity_pb2.BindPaymentRequest(
                identity_id=ident.identity_id, payment_ref="ref-fuzz", factors=1
            ),
            metadata=md,
        )
        f = Fuzzer(running, channel, ident.identity_id, plate)
        # Warm up every path once (lazy allocations, arenas), then take the baseline.
        for method in SERVICES:
            f.call(method, build(method, f, s.jpeg, valid=True))
        f.call("ReadPlates", build("ReadPlates", f, s.plate_frame, valid=True))
        f.cases, f.codes, f.crashes = 0, {}, []
        f.baseline_rss = f.peak_rss = f.rss()
        yield f
    finally:
        channel.close()
        running.stop(grace=1.0)


# --- requests ------------------------------------------------------------------------------


def build(method: str, f: Fuzzer, image: bytes, valid: bool = False, **kw: Any) -> bytes:
    """A serialised request for `method` carrying `image`, with fuzzed other fields in kw."""
    cls = SERVICES[method][1]
    if method in ("DetectFaces", "ReadPlates", "IdentifyFace"):
        msg = cls(image=image, **kw)
    elif method == "VerifyFace":
        kw.setdefault("identity_id", f.identity_id)
        msg = cls(image=image, **kw)
    elif method == "EnrollFace":
        kw.setdefault("identity_id", f.identity_id)
        kw.setdefault("images", [image])
        if valid:
            kw.setdefault("force", True)
        msg = cls(**kw)
    elif method == "CreateIdentity":
        kw.setdefault("display_name", "x")
        msg = cls(**kw)
    elif method == "BindPayment":
        kw.setdefault("identity_id", f.identity_id)
        kw.setdefault("payment_ref", "ref")
        msg = cls(**kw)
    else:  # Authorize
        kw.setdefault("gate_id", "G-fuzz")
        kw.setdefault("event_id", uuid.uuid4().hex)
        if valid:
            kw.setdefault("plate_text", f.plate)
            kw.setdefault("face_image", image)
        else:
            kw.setdefault("face_image", image)
        msg = cls(**kw)
    return msg.SerializeToString()


def flip_bits(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, bit in flips:
        out[pos % len(out)] ^= 1 << bit
    return bytes(out)


@st.composite
def hostile_images(draw: st.DrawFn) -> bytes:
    s = samples()
    kind = draw(
        st.sampled_from(
            ["random", "magic", "truncated", "flipped", "header", "special", "special", "valid"]
        )
    )
    if kind == "random":
        return draw(st.binary(max_size=4096))
    if kind == "magic":
        prefix = draw(st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF"]))
        return prefix + draw(st.binary(max_size=2048))
    base = draw(st.sampled_from([s.jpeg, s.png]))
    if kind == "truncated":
        return base[: draw(st.integers(0, len(base) - 1))]
    if kind == "flipped":
        flips = draw(
            st.lists(st.tuples(st.integers(0, len(base) - 1), st.integers(0, 7)), max_size=24)
        )
        return flip_bits(base, flips)
    if kind == "header":  # flips where the parsers look: signature, IHDR, SOF and tables
        flips = draw(
            st.lists(st.tuples(st.integers(0, 400), st.integers(0, 7)), min_size=1, max_size=6)
        )
        return flip_bits(base, flips)
    if kind == "special":
        return draw(st.sampled_from(s.special))[1]
    return base


text = st.text(max_size=40)
int32 = st.integers(-(2**31), 2**31 - 1)
int64 = st.integers(-(2**63), 2**63 - 1)


@st.composite
def fuzz_cases(draw: st.DrawFn, f: Fuzzer) -> tuple[str, bytes]:
    method = draw(st.sampled_from(sorted(SERVICES)))
    image = draw(hostile_images())
    kw: dict[str, Any] = {}
    if method == "DetectFaces":
        kw["selection"] = draw(st.sampled_from([0, 1, 2, 77, -1]))
    elif method == "ReadPlates":
        kw["max_candidates"] = draw(st.one_of(st.integers(-3, 25), int32))
    elif method in ("IdentifyFace", "VerifyFace"):
        if draw(st.booleans()):
            kw["threshold"] = draw(st.floats(width=32))
        if method == "IdentifyFace":
            kw["top_k"] = draw(st.one_of(st.integers(-3, 120), int32))
        else:
            kw["identity_id"] = draw(st.one_of(st.just(f.identity_id), text))
    elif method == "EnrollFace":
        kw["identity_id"] = draw(st.one_of(st.just(f.identity_id), text))
        kw["images"] = draw(st.lists(hostile_images(), max_size=3))
        kw["force"] = draw(st.booleans())
        kw["source"] = draw(text)
    elif method == "CreateIdentity":
        kw["display_name"] = draw(text)
        kw["external_ref"] = draw(text)
        kw["metadata"] = draw(st.dictionaries(text, text, max_size=3))
    elif method == "BindPayment":
        kw["identity_id"] = draw(st.one_of(st.just(f.identity_id), text))
        kw["payment_ref"] = draw(text)
        kw["factors"] = draw(st.one_of(st.sampled_from([0, 1, 2, 3, 42, -7]), int32))
        kw["ceiling_minor"] = draw(st.one_of(st.integers(-1000, 1000), int64))
    else:  # Authorize
        kw["gate_id"] = draw(st.one_of(st.just("G-fuzz"), text))
        kw["event_id"] = draw(st.one_of(st.just(uuid.uuid4().hex), text))
        kw["plate_text"] = draw(st.one_of(st.just(f.plate), text))
        kw["amount_minor"] = draw(st.one_of(st.integers(-1000, 100_000), int64))
        kw["direction"] = draw(st.sampled_from([0, 1, 2, 99, -3]))
        kw["currency"] = draw(text)
        slot = draw(st.sampled_from(["face_image", "vehicle_image", "both", "none"]))
        if slot in ("vehicle_image", "both"):
            kw["vehicle_image"] = image
        if slot in ("face_image", "both"):
            kw["face_image"] = image
        if slot == "none":
            kw["face_image"] = b""
    return method, build(method, f, image, **kw)


def run_fuzz(f: Fuzzer, examples: int, rng_seed: int) -> None:
    @seed(rng_seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate],  # no shrinking: a failure is recorded, not minimised
    )
    @given(st.data())
    def one(data: st.DataObject) -> None:
        method, body = data.draw(fuzz_cases(f))
        f.call(method, body)

    one()


def explicit_cases(f: Fuzzer) -> None:
    """Every named hostile image once into every image-taking RPC, plus enum/number edges."""
    s = samples()
    for name, image in s.special:
        for method in SERVICES:
            if method in ("CreateIdentity", "BindPayment"):
                continue
            out = f.call(method, build(method, f, image))
            assert out.code in ALLOWED, (name, method, out)
    # Decompression bombs and impossible sizes are refused, not decoded.
    for name in ("png-declares-60000x60000", "jpeg-sof-65000x65000", "20000x20.png", "1x1.png"):
        image = dict(s.special)[name]
        out = f.call("DetectFaces", build("DetectFaces", f, image))
        assert out.code is grpc.StatusCode.INVALID_ARGUMENT, (name, out)
    for name in ("gray.png", "rgb16.png", "gray16.png", "bgra.png", "photo.webp"):
        out = f.call("DetectFaces", build("DetectFaces", f, dict(s.special)[name]))
        assert out.code is grpc.StatusCode.OK, (name, out)
    # Numbers and enums out of range.
    checks: list[tuple[str, bytes, set[grpc.StatusCode]]] = [
        (
            "Authorize",
            build("Authorize", f, b"", amount_minor=-5, plate_text=f.plate),
            {grpc.StatusCode.INVALID_ARGUMENT},
        ),
        (
            "Authorize",
            build("Authorize", f, b"", direction=99, plate_text=f.plate),
            {grpc.StatusCode.INVALID_ARGUMENT},
        ),
        (
            "BindPayment",
            build("BindPayment", f, b"", ceiling_minor=-1),
            {grpc.StatusCode.INVALID_ARGUMENT},
        ),
        (
            "BindPayment",
            build("BindPayment", f, b"", factors=42),
            {grpc.StatusCode.INVALID_ARGUMENT},
        ),
        ("DetectFaces", build("DetectFaces", f, s.jpeg, selection=77), {grpc.StatusCode.OK}),
        (
            "IdentifyFace",
            build("IdentifyFace", f, s.jpeg, top_k=-1),
            {grpc.StatusCode.INVALID_ARGUMENT},
        ),
        (
            "IdentifyFace",
            build("IdentifyFace", f, s.jpeg, threshold=float("nan")),
            {grpc.StatusCode.INVALID_ARGUMENT},
        ),
        (
            "ReadPlates",
            build("ReadPlates", f, s.plate_frame, max_candidates=-1),
            {grpc.StatusCode.INVALID_ARGUMENT},
        ),
    ]
    for method, body, expected in checks:
        out = f.call(method, body)
        assert out.code in expected, (method, out)
    # An oversized message is refused by gRPC itself (or by the image limit).
    big = build("DetectFaces", f, b"\xff\xd8\xff" + b"\x00" * (17 * MiB))
    out = f.call("DetectFaces", big)
    assert out.code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT), out


def finish(f: Fuzzer, label: str, t0: float) -> None:
    rss = f.sample_rss()
    print(
        f"\nfuzz {label}: cases={f.cases} crashes={len(f.crashes)} "
        f"peak_rss={f.peak_rss / MiB:.0f}MiB baseline_rss={f.baseline_rss / MiB:.0f}MiB "
        f"final_rss={rss / MiB:.0f}MiB seconds={time.monotonic() - t0:.0f} codes={f.codes}"
    )
    assert not f.crashes, f.crashes[:10]
    assert f.health() == "SERVING"
    assert f.peak_rss < 2.5 * GiB, f.peak_rss
    assert rss - f.baseline_rss < 500 * MiB, (rss, f.baseline_rss)


def test_fuzz_ci(fuzzer: Fuzzer) -> None:
    t0 = time.monotonic()
    explicit_cases(fuzzer)
    run_fuzz(fuzzer, examples=1400, rng_seed=1)
    finish(fuzzer, "ci", t0)
    assert fuzzer.cases >= 1500


@pytest.mark.slow
def test_fuzz_slow(fuzzer: Fuzzer) -> None:
    t0 = time.monotonic()
    start = fuzzer.cases
    explicit_cases(fuzzer)
    run_fuzz(fuzzer, examples=10_000, rng_seed=2)
    finish(fuzzer, "slow", t0)
    assert fuzzer.cases - start >= 10_000


# --- invalid UTF-8 and undecodable wire messages ---------------------------------------------


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2) with a one-byte tag."""
    return bytes([(number << 3) | 2]) + _varint(len(payload)) + payload


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


BAD_UTF8 = b"\xff\xfe\xc3\x28id"
# Field 1 is a string id in each of these requests.
UTF8_TARGETS = ["VerifyFace", "EnrollFace", "CreateIdentity", "BindPayment", "Authorize"]


@pytest.mark.parametrize("method", UTF8_TARGETS)
def test_invalid_utf8_in_string_ids_is_invalid_argument(fuzzer: Fuzzer, method: str) -> None:
    s = samples()
    body = build(method, fuzzer, s.jpeg if method != "EnrollFace" else b"", valid=False)
    body += _field(1, BAD_UTF8)  # the last occurrence of a field wins: the id is invalid
    out = fuzzer.call(method, body, record=False)
    assert "Traceback" not in out.details
    assert out.code is grpc.StatusCode.INVALID_ARGUMENT, out


def test_undecodable_message_is_invalid_argument(fuzzer: Fuzzer) -> None:
    out = fuzzer.call("DetectFaces", b"\x0a\xff\xff\xff\xff\x0f", record=False)
    assert out.code is grpc.StatusCode.INVALID_ARGUMENT, out


def test_invalid_utf8_never_leaks_a_trace_or_kills_the_server(fuzzer: Fuzzer) -> None:
    """Whatever the status, the server survives and answers without a trace."""
    for method in UTF8_TARGETS:
        body = build(method, fuzzer, samples().jpeg, valid=False) + _field(1, BAD_UTF8)
        out = fuzzer.call(method, body, record=False)
        assert "Traceback" not in out.details
        assert out.code is not grpc.StatusCode.UNKNOWN
    assert fuzzer.health() == "SERVING"
