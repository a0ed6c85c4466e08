"""Length and count limits for every string, map and repeated field of a request.

Checked once, before any handler runs, so no field reaches the store or a log unbounded. The
proto comments document the same numbers; `tests/test_limits.py` checks every request field
of the API has a limit here or takes the default. Image bytes are bounded by the image
limits (`recognizer.imaging`), not here.
"""

from __future__ import annotations

from typing import Any, cast

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from recognizer.errors import InvalidArgument
from recognizer.gate.inputs import MAX_FRAMES

DEFAULT_STRING = 256  # characters
DEFAULT_REPEATED = 100  # items
STRING_LIMITS: dict[str, int] = {
    "gate_id": 128,
    "event_id": 128,
    "plate_text": 32,
    "plate": 32,
    "currency": 8,
    "identity_id": 64,
    "binding_id": 64,
    "template_id": 20,
    "page_token": 64,
    "after_decision_id": 64,
}
REPEATED_LIMITS: dict[str, int] = {
    "images": 10,
    "vehicle_images": MAX_FRAMES,  # Authorize bursts; with the single field: see gate/inputs
    "face_images": MAX_FRAMES,
    "metadata": 32,
}
MAP_KEY_CHARS = 64
MAP_VALUE_CHARS = 1024


def _repeated(fd: FieldDescriptor) -> bool:
    # protobuf 5+ spells it is_repeated; older releases only have the label.
    flag = getattr(fd, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return bool(cast(Any, fd).label == FieldDescriptor.LABEL_REPEATED)  # not in newer stubs


def _too_long(path: str, limit: int, what: str) -> InvalidArgument:
    return InvalidArgument(f"{path} has more than {limit} {what}", field=path, reason="TOO_LONG")


def check(message: Message, prefix: str = "") -> None:
    """Raise InvalidArgument (field violation) for the first field over its limit."""
    for fd, value in message.ListFields():
        path = prefix + fd.name
        is_map = fd.message_type is not None and fd.message_type.GetOptions().map_entry
        if is_map or _repeated(fd):
            limit = REPEATED_LIMITS.get(fd.name, DEFAULT_REPEATED)
            if len(value) > limit:
                raise _too_long(path, limit, "items")
        if is_map:
            for k, v in value.items():
                if len(k) > MAP_KEY_CHARS:
                    raise _too_long(f"{path} key", MAP_KEY_CHARS, "characters")
                if isinstance(v, str) and len(v) > MAP_VALUE_CHARS:
                    raise _too_long(f"{path}[{k}]", MAP_VALUE_CHARS, "characters")
            continue
        items = value if _repeated(fd) else [value]
        for item in items:
            if fd.type == FieldDescriptor.TYPE_STRING:
                limit = STRING_LIMITS.get(fd.name, DEFAULT_STRING)
                if len(item) > limit:
                    raise _too_long(path, limit, "characters")
            elif fd.type == FieldDescriptor.TYPE_MESSAGE:
                check(item, path + ".")
