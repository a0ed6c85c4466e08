"""Domain errors raised by vision, gallery and fusion code; the service maps them to gRPC codes.

They carry no gRPC types so pure-numpy code can raise them; `service/errors.py` does the
mapping in one place (the status table in the README's API section).
"""

from __future__ import annotations


class RecognizerError(Exception):
    """Base class. `field` names the request field at fault, for BadRequest details."""

    def __init__(self, message: str, *, field: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.reason = reason


class InvalidArgument(RecognizerError):
    """Bad or oversized input, or no face/plate where one is required."""


class FailedPrecondition(RecognizerError):
    """Quality too low, models or index not ready."""


class NotFound(RecognizerError):
    """Unknown identity, template or binding."""


class AlreadyExists(RecognizerError):
    """Duplicate enrolment, a plate already bound elsewhere, or an event id reused."""

    def __init__(
        self, message: str, *, identity_id: str = "", field: str = "", reason: str = ""
    ) -> None:
        super().__init__(message, field=field, reason=reason)
        self.identity_id = identity_id


class PermissionDenied(RecognizerError):
    """The caller's key may not act on this resource (e.g. a gate outside its scope)."""


class DeadlineExceeded(RecognizerError):
    """The caller's deadline ran out, or it cancelled, before the next stage could start."""


class Unavailable(RecognizerError):
    """This node cannot answer now (a replica behind the shared store, the database down,
    the disk full); another node, or a retry after `retry_after_s` (when set), can."""

    def __init__(
        self,
        message: str,
        *,
        field: str = "",
        reason: str = "",
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, field=field, reason=reason)
        self.retry_after_s = retry_after_s
