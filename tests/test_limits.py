"""Every string, map and repeated field of every request has a limit, and it holds."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from recognizer.errors import InvalidArgument
from recognizer.service import limits
from recognizer.v1 import gate_pb2, identity_pb2, recognition_pb2

SERVICES = [
    gate_pb2.DESCRIPTOR.services_by_name["GateService"],
    gate_pb2.DESCRIPTOR.services_by_name["AdminService"],
    identity_pb2.DESCRIPTOR.services_by_name["IdentityService"],
    recognition_pb2.DESCRIPTOR.services_by_name["RecognitionService"],
]
MODULES = (gate_pb2, identity_pb2, recognition_pb2)


def request_types() -> list[type[Message]]:
    out = {}
    for service in SERVICES:
        for method in service.methods:
            name = method.input_type.name
            out[name] = next(getattr(m, name) for m in MODULES if hasattr(m, name))
    return [out[k] for k in sorted(out)]


def string_fields() -> list[tuple[type[Message], FieldDescriptor]]:
    return [
        (cls, fd)
        for cls in request_types()
        for fd in cls.DESCRIPTOR.fields
        if fd.type == FieldDescriptor.TYPE_STRING and fd.message_type is None
    ]


@pytest.mark.parametrize(
    ("cls", "fd"), string_fields(), ids=lambda x: getattr(x, "full_name", str(x))
)
def test_every_string_field_is_bounded(cls: type[Message], fd: FieldDescriptor) -> None:
    limit = limits.STRING_LIMITS.get(fd.name, limits.DEFAULT_STRING)
    at_limit = cls()
    over = cls()
    if limits._repeated(fd):
        getattr(at_limit, fd.name).append("x" * limit)
        getattr(over, fd.name).append("x" * (limit + 1))
    else:
        setattr(at_limit, fd.name, "x" * limit)
        setattr(over, fd.name, "x" * (limit + 1))
    limits.check(at_limit)
    with pytest.raises(InvalidArgument) as err:
        limits.check(over)
    assert err.value.field == fd.name


def test_repeated_and_map_fields_are_bounded() -> None:
    enrol = identity_pb2.EnrollFaceRequest(images=[b""] * limits.REPEATED_LIMITS["images"])
    limits.check(enrol)
    enrol.images.append(b"")
    with pytest.raises(InvalidArgument):
        limits.check(enrol)
    meta = identity_pb2.CreateIdentityRequest(metadata={"k": "v" * limits.MAP_VALUE_CHARS})
    limits.check(meta)
    meta.metadata["k"] += "v"
    with pytest.raises(InvalidArgument):
        limits.check(meta)
    with pytest.raises(InvalidArgument):
        limits.check(identity_pb2.CreateIdentityRequest(metadata={"k" * 65: "v"}))
