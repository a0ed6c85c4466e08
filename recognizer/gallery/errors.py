"""Domain exceptions raised by the gallery; the servicer maps them to gRPC status codes.

They are the project-wide classes from `recognizer.errors`, re-exported here, so that the one
mapping in `service/errors.py` recognises gallery errors without a second hierarchy.
"""

from __future__ import annotations

from recognizer.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RecognizerError,
)

__all__ = [
    "AlreadyExists",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "RecognizerError",
]
