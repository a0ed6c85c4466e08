"""The one mapping from domain errors to gRPC status, using google.rpc rich status details."""

from __future__ import annotations

import logging
import uuid
from typing import Any, cast

import grpc
import psycopg
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from psycopg_pool import PoolTimeout

from recognizer import errors
from recognizer.onnx import ModelError

log = logging.getLogger("recognizer.errors")

DOMAIN = "recognizer.v1"

_CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (ModelError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
)


def _pack(msg) -> any_pb2.Any:  # type: ignore[no-untyped-def]
    a = any_pb2.Any()
    a.Pack(msg)
    return a


PUSHBACK_HEADER = "grpc-retry-pushback-ms"


def build_status(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str = "",
    field: str = "",
    metadata: dict[str, str] | None = None,
    retry_after_s: float | None = None,
) -> grpc.Status:
    """A grpc.Status carrying ErrorInfo, and BadRequest/RetryInfo where they apply."""
    details = []
    if reason or metadata:
        details.append(
            _pack(
                error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata or {})
            )
        )
    if field:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=field, description=message
                        )
                    ]
                )
            )
        )
    if retry_after_s is not None:
        secs = int(retry_after_s)
        delay = duration_pb2.Duration(seconds=secs, nanos=int((retry_after_s - secs) * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=details)
    built: Any = rpc_status.to_status(status)  # a grpc.Status namedtuple; grpc_status is untyped
    if retry_after_s is None:
        return cast(grpc.Status, built)
    # The same delay for gRPC's own retry policy, which reads this header, not RetryInfo.
    pushback = (PUSHBACK_HEADER, str(max(0, round(retry_after_s * 1000))))
    return cast(grpc.Status, built._replace(trailing_metadata=(*built.trailing_metadata, pushback)))


def status_for_exception(exc: Exception) -> grpc.Status:
    """Map a domain error; anything unexpected becomes INTERNAL with an id, never a trace."""
    for cls, code in _CODES:
        if isinstance(exc, cls):
            if isinstance(exc, errors.RecognizerError):
                meta = {}
                if isinstance(exc, errors.AlreadyExists) and exc.identity_id:
                    meta["identity_id"] = exc.identity_id
                retry = exc.retry_after_s if isinstance(exc, errors.Unavailable) else None
                return build_status(
                    code,
                    exc.message,
                    reason=exc.reason,
                    field=exc.field,
                    metadata=meta,
                    retry_after_s=retry,
                )
            return build_status(code, str(exc), reason="MODEL_NOT_READY")
    if isinstance(exc, psycopg.OperationalError | PoolTimeout):
        # The shared database is unreachable or saturated: another node, or a retry, may do.
        log.error("database unavailable: %s", exc)
        return build_status(
            grpc.StatusCode.UNAVAILABLE,
            "the database is unavailable; retry",
            reason="DATABASE_UNAVAILABLE",
            retry_after_s=1.0,
        )
    error_id = uuid.uuid4().hex[:12]
    log.error("internal error %s", error_id, exc_info=exc)
    return build_status(
        grpc.StatusCode.INTERNAL, f"internal error (id {error_id})", reason="INTERNAL"
    )
