"""Server interceptors: metrics+logging, auth, admission (deadlines, in-flight limits), errors.

Each wraps the unary handler so the servicers stay thin and never see auth or accounting.
Order, outermost first: Observe -> Auth -> Admission -> Errors -> servicer. The one server
stream (WatchDecisions) is observed, authorised and error-mapped too; it is not admitted
(its own bound is `watch_max_streams`).
"""

from __future__ import annotations

import contextvars
import hmac
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeAlias, cast

import grpc
from google.protobuf.message import Message

from recognizer import accounting, deadline, telemetry, tracing
from recognizer.api import API_KEY_HEADER
from recognizer.config import ApiKey, Role, hash_key
from recognizer.deadline import RecentCosts
from recognizer.errors import PermissionDenied
from recognizer.service import limits, principal
from recognizer.service.admission import MethodQueue, QueueOutcome, QueueVerdict, uniform_jitter
from recognizer.service.errors import build_status, status_for_exception
from recognizer.v1 import gate_pb2

log = logging.getLogger("recognizer.access")


HEALTH_PREFIX = "/grpc.health.v1.Health/"

Behavior = Callable[[Any, grpc.ServicerContext], Any]


Wrapper = Callable[[Behavior, grpc.HandlerCallDetails], Behavior]


Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic in the stubs only


def _replaced(handler: Handler, **changes: Any) -> Handler:
    """The handler with some fields changed: grpc's handlers are namedtuples, which its type
    stubs do not say."""
    out: Handler = cast(Any, handler)._replace(**changes)
    return out


def _code(context: grpc.ServicerContext) -> grpc.StatusCode | None:
    """The status the handler set, if any (`code()` exists since grpc 1.38; not in its stubs)."""
    code: grpc.StatusCode | None = cast(Any, context).code()
    return code


def _wrap(
    continuation: Callable[[grpc.HandlerCallDetails], Handler | None],
    details: grpc.HandlerCallDetails,
    wrapper: Wrapper,
    streams: Wrapper | None = None,
) -> Handler | None:
    """`wrapper` around a unary handler, `streams` around a server-streaming one (its
    behaviour returns an iterator); reflection's bidirectional streams pass untouched."""
    handler = continuation(details)
    if handler is None:
        return None
    if handler.unary_unary is not None:
        return _replaced(handler, unary_unary=wrapper(handler.unary_unary, details))
    if handler.unary_stream is not None and streams is not None:
        return _replaced(handler, unary_stream=streams(handler.unary_stream, details))
    return handler


def _aborted(context: grpc.ServicerContext) -> bool:
    return _code(context) not in (None, grpc.StatusCode.OK)


# --- metrics and access log -------------------------------------------------------------


@dataclass(slots=True)
class MethodStats:
    calls: int = 0
    errors: int = 0
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    inference_seconds: float = 0.0


@dataclass(slots=True)
class Metrics:
    methods: dict[str, MethodStats] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, method: str, ok: bool, wall: float, cpu: float, inference: float) -> None:
        with self.lock:
            s = self.methods.setdefault(method, MethodStats())
            s.calls += 1
            s.errors += 0 if ok else 1
            s.wall_seconds += wall
            s.cpu_seconds += cpu
            s.inference_seconds += inference

    def snapshot(self) -> dict[str, MethodStats]:
        with self.lock:
            return {k: replace(v) for k, v in self.methods.items()}


REQUEST_ID_HEADER = "x-request-id"  # a caller's own id is kept (if sane); else one is made
AUTHORIZE = "/recognizer.v1.GateService/Authorize"
_REQUEST_ID_OK = re.compile(r"[A-Za-z0-9._:-]{1,64}")

# What the inner layers add to the call's access-log line (the key's name, from Auth).
_access: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "access_fields", default=None
)


def abort(context: grpc.ServicerContext, status: grpc.Status) -> None:
    """abort_with_status, with the call's request id in the trailers."""
    current = _access.get()
    if current is not None and current.get("request_id"):
        trailers = (*status.trailing_metadata, (REQUEST_ID_HEADER, current["request_id"]))
        status = status._replace(trailing_metadata=trailers)  # type: ignore[attr-defined]
    context.abort_with_status(status)


def note(**fields: Any) -> None:
    """Add fields to the current call's access-log line (no-op outside a call)."""
    current = _access.get()
    if current is not None:
        current.update(fields)


def request_id_of(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER:
            text = value if isinstance(value, str) else value.decode("utf-8", "replace")
            if _REQUEST_ID_OK.fullmatch(text):
                return text
    return uuid.uuid4().hex


def decision_fields(method: str, request: Any, response: Any) -> dict[str, Any]:
    """For Authorize: what finds a disputed decision (ids, outcome, reasons). Never images,
    plates or amounts."""
    if method != AUTHORIZE:
        return {}
    out: dict[str, Any] = {
        "gate_id": getattr(request, "gate_id", ""),
        "event_id": getattr(request, "event_id", ""),
    }
    if response is not None and hasattr(response, "decision_id"):
        out["decision_id"] = response.decision_id
        out["outcome"] = gate_pb2.Outcome.Name(response.outcome).removeprefix("OUTCOME_").lower()
        out["reasons"] = [r.code for r in response.reasons]
        out["policy_id"] = response.policy_id
        out["replayed"] = response.replayed
    return out


class ObserveInterceptor(grpc.ServerInterceptor):
    """One structured log line and one metrics record per call. Never logs payloads.

    The line carries a request id (the caller's `x-request-id`, else a new one, sent back in
    the initial metadata), the API key's name (never the key), and for Authorize the gate,
    event, decision id, outcome and reasons."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        def wrapper(behavior: Behavior, d: grpc.HandlerCallDetails) -> Behavior:
            def observed(request: Any, context: grpc.ServicerContext) -> Any:
                t0, c0 = time.perf_counter(), time.thread_time()
                usage, token = accounting.begin()
                request_id = request_id_of(d.invocation_metadata)
                fields: dict[str, Any] = {"request_id": request_id, "key": ""}
                access = _access.set(fields)
                ok = False
                response = None
                try:
                    with tracing.span(d.method, request_id=request_id):
                        response = behavior(request, context)
                    ok = not _aborted(context)
                    # Headers only with an answer: a refusal stays a trailers-only response,
                    # which a client's retry policy may retry (headers commit the call). A
                    # refusal carries the id in its trailers (`abort`).
                    context.send_initial_metadata(((REQUEST_ID_HEADER, request_id),))
                    return response
                finally:
                    _access.reset(access)
                    wall = time.perf_counter() - t0
                    cpu = time.thread_time() - c0 + usage.cpu
                    accounting.end(token)
                    self._metrics.record(d.method, ok, wall, cpu, usage.inference)
                    _log_call(d.method, context, wall, fields, request, response if ok else None)

            return observed

        def streamed(behavior: Behavior, d: grpc.HandlerCallDetails) -> Behavior:
            def observed(request: Any, context: grpc.ServicerContext) -> Any:
                t0 = time.perf_counter()
                request_id = request_id_of(d.invocation_metadata)
                fields: dict[str, Any] = {"request_id": request_id, "key": "", "sent": 0}
                try:
                    access = _access.set(fields)
                    try:  # the inner wrappers note the key now; the stream runs as it is read
                        stream = behavior(request, context)
                    finally:
                        _access.reset(access)
                    context.send_initial_metadata(((REQUEST_ID_HEADER, request_id),))
                    for item in stream:
                        fields["sent"] += 1
                        yield item
                finally:
                    _log_call(d.method, context, time.perf_counter() - t0, fields, request, None)

            return observed

        return _wrap(continuation, details, wrapper, streamed)


def _log_call(
    method: str,
    context: grpc.ServicerContext,
    wall: float,
    fields: dict[str, Any],
    request: Any,
    response: Any,
) -> None:
    code = _code(context) or grpc.StatusCode.OK
    telemetry.observe_call(method, code.name, wall)
    log.info(
        "rpc",
        extra={
            "fields": {
                "method": method,
                "code": code.name,
                "ms": round(wall * 1000, 2),
                "peer": context.peer(),
                **fields,
                **decision_fields(method, request, response),
            }
        },
    )


# --- authentication and roles ------------------------------------------------------------

_R = Role
# Which roles may call each method. Anything not listed is admin-only.
METHOD_ROLES: Mapping[str, frozenset[Role]] = {
    "/recognizer.v1.IdentityService/GetIdentity": frozenset({_R.ADMIN, _R.VERIFIER}),
    "/recognizer.v1.IdentityService/ListIdentities": frozenset({_R.ADMIN, _R.VERIFIER}),
    "/recognizer.v1.IdentityService/LookupPlate": frozenset({_R.ADMIN, _R.VERIFIER}),
    "/recognizer.v1.RecognitionService/DetectFaces": frozenset({_R.ADMIN, _R.VERIFIER}),
    "/recognizer.v1.RecognitionService/VerifyFace": frozenset({_R.ADMIN, _R.VERIFIER}),
    "/recognizer.v1.RecognitionService/IdentifyFace": frozenset({_R.ADMIN, _R.VERIFIER}),
    # Not the verifier: a plate is personal, and verifying payers needs no plate reader.
    "/recognizer.v1.RecognitionService/ReadPlates": frozenset({_R.ADMIN, _R.GATE}),
    "/recognizer.v1.GateService/Authorize": frozenset({_R.ADMIN, _R.GATE}),
}
ANY_ROLE_PREFIXES = ("/grpc.reflection.",)


def roles_for(method: str) -> frozenset[Role]:
    if method.startswith(ANY_ROLE_PREFIXES):
        return frozenset(Role)
    return METHOD_ROLES.get(method, frozenset({Role.ADMIN}))


# A refused call: (peer, the key's name or "", the reason); see service/authfail.py.
OnFailure = Callable[[str, str, str], None]


class AuthInterceptor(grpc.ServerInterceptor):
    """API key in `x-api-key` metadata; keys are compared as sha256 hashes. Refusals go to
    `on_failure` (the failed-authentication audit)."""

    def __init__(self, keys: tuple[ApiKey, ...], on_failure: OnFailure | None = None) -> None:
        self._keys = keys
        self._on_failure = on_failure

    def key_of(self, presented: str) -> ApiKey | None:
        digest = hash_key(presented)
        found = None
        for k in self._keys:  # compare against every key: no early exit to time
            if hmac.compare_digest(digest, k.sha256):
                found = k
        return found

    def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        if details.method.startswith(HEALTH_PREFIX):
            return continuation(details)  # probes carry no key
        presented = ""
        for key, value in details.invocation_metadata or ():
            if key == API_KEY_HEADER:
                presented = value if isinstance(value, str) else value.decode("utf-8", "replace")
        key = self.key_of(presented) if presented else None
        role = key.role if key is not None else None
        allowed = roles_for(details.method)
        if key is not None and role in allowed:

            def as_key(binder: Callable[..., Behavior]) -> Wrapper:
                """A unary (principal.bind) or streaming (bind_stream) handler, run as `key`
                and noted in the access log."""

                def wrap(behavior: Behavior, d: grpc.HandlerCallDetails) -> Behavior:
                    bound = binder(behavior, key, d.method)

                    def named(request: Any, context: grpc.ServicerContext) -> Any:
                        note(key=principal.key_name(key))
                        return bound(request, context)

                    return named

                return wrap

            return _wrap(
                continuation, details, as_key(principal.bind), as_key(principal.bind_stream)
            )

        if role is None:
            reason = "API_KEY_INVALID" if presented else "API_KEY_MISSING"
            status = build_status(
                grpc.StatusCode.UNAUTHENTICATED,
                f"missing or unknown API key (send it in the '{API_KEY_HEADER}' metadata)",
                reason=reason,
            )
        else:
            reason = "ROLE_NOT_ALLOWED"
            status = build_status(
                grpc.StatusCode.PERMISSION_DENIED,
                f"role '{role}' may not call {details.method}",
                reason=reason,
            )
        name = principal.key_name(key) if key is not None else ""

        def refused(context: grpc.ServicerContext) -> None:
            note(key=name)
            if self._on_failure is not None:
                self._on_failure(context.peer(), name, reason)
            abort(context, status)

        def deny(request: Any, context: grpc.ServicerContext) -> Any:
            refused(context)

        handler = continuation(details)
        if handler is None:
            return None
        if handler.unary_unary is not None:
            return _replaced(handler, unary_unary=deny)
        if handler.unary_stream is not None:
            return _replaced(handler, unary_stream=deny)
        if handler.stream_stream is not None:  # reflection

            def deny_stream(request_iter: Any, context: grpc.ServicerContext) -> Any:
                refused(context)

            return _replaced(handler, stream_stream=deny_stream)
        return handler


# --- admission: deadlines, in-flight limits, expected finish times ------------------------

QUEUE_WAIT_HEADER = "x-queue-wait-ms"  # trailing metadata of an admitted call
NO_DEADLINE_S = 1e8  # gRPC reports "no deadline" as a practically infinite time_remaining()


def _remaining(context: grpc.ServicerContext) -> float | None:
    left = context.time_remaining()
    return None if left is None or left > NO_DEADLINE_S else float(left)


class AdmissionInterceptor(grpc.ServerInterceptor):
    """Refuse work that cannot finish in time, and bound in-flight and queued calls per method.

    Each method has its own queue (`admission.MethodQueue`), so a flood of one method never
    takes the slots of another. A call that would wait past its deadline is refused at once
    with RESOURCE_EXHAUSTED and a RetryInfo of the estimated wait; one whose deadline cannot
    hold the work gets DEADLINE_EXCEEDED, before any work. An admitted call runs inside a
    `deadline.Budget`, so domain code stops at its next stage once the caller has gone.
    """

    def __init__(
        self,
        max_in_flight: int,
        min_deadline_ms: int,
        max_queue: int = 8,
        max_queue_wait_s: float = 5.0,
        costs: RecentCosts | None = None,
        jitter: Callable[[], float] = uniform_jitter,
    ) -> None:
        self._max = max_in_flight
        self._queue = max_queue
        self._max_wait = max_queue_wait_s
        self._min_deadline = min_deadline_ms / 1000.0
        self.costs = costs or RecentCosts()  # methods and stages, shared by all calls
        self._jitter = jitter
        self._queues: dict[str, MethodQueue] = {}
        self._lock = threading.Lock()

    def queue(self, method: str) -> MethodQueue:
        with self._lock:
            q = self._queues.get(method)
            if q is None:
                q = self._queues[method] = MethodQueue(
                    method,
                    self._max,
                    self._queue,
                    self.costs,
                    max_wait_s=self._max_wait,
                    min_deadline_s=self._min_deadline,
                    jitter=self._jitter,
                )
            return q

    def _all_queues(self) -> list[MethodQueue]:
        with self._lock:
            return list(self._queues.values())

    def idle(self) -> bool:
        """No call of any method runs or waits."""
        return all(g.running == 0 and g.waiting == 0 for g in self._all_queues())

    def activity(self) -> int:
        """Calls admitted so far, all methods."""
        return sum(g.started for g in self._all_queues())

    def queue_depths(self) -> dict[str, int]:
        """Calls waiting for a slot, by method."""
        return {g.name: g.waiting for g in self._all_queues()}

    @staticmethod
    def _refuse(context: grpc.ServicerContext, method: str, verdict: QueueVerdict) -> None:
        telemetry.REJECTIONS.labels(method, verdict.outcome.name.lower()).inc()
        if verdict.outcome in (QueueOutcome.TOO_SHORT, QueueOutcome.CANCELLED):
            abort(
                context,
                build_status(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    "the deadline ran out before work started",
                    reason="DEADLINE_TOO_SHORT",
                ),
            )
        why = {
            QueueOutcome.FULL: "the queue is full",
            QueueOutcome.LATE: "the queue would outlast the deadline",
            QueueOutcome.QUEUE_TIMEOUT: "no slot within the queue time limit",
        }[verdict.outcome]
        abort(
            context,
            build_status(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many calls to {method}: {why}; "
                f"retry after about {verdict.retry_after_s:.2f}s",
                reason="OVERLOADED",
                metadata={"queued_ahead": str(verdict.queued_ahead)},
                retry_after_s=verdict.retry_after_s,
            ),
        )

    def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        def wrapper(behavior: Behavior, d: grpc.HandlerCallDetails) -> Behavior:
            queue = self.queue(d.method)

            def admitted(request: Any, context: grpc.ServicerContext) -> Any:
                ended = threading.Event()

                def gone() -> bool:
                    # Once the call has answered, work it left behind in other threads
                    # (a branch whose sibling failed) is for nobody either.
                    return ended.is_set() or not context.is_active()

                verdict = queue.enter(_remaining(context), gone)
                if verdict.outcome is not QueueOutcome.ADMITTED:
                    self._refuse(context, d.method, verdict)
                t0 = time.monotonic()
                # The budget ends min_deadline early: the answer still has to reach the
                # caller, whose clock started before this server's (the request's transit).
                left = _remaining(context)
                left = None if left is None else left - self._min_deadline
                budget = deadline.Budget.after(left, gone, self.costs)
                try:
                    with deadline.running(budget):
                        response = behavior(request, context)
                    wait_ms = f"{verdict.waited_s * 1000:.1f}"
                    context.set_trailing_metadata(((QUEUE_WAIT_HEADER, wait_ms),))
                    return response
                finally:
                    ended.set()
                    ran = time.monotonic() - t0
                    if left is not None and _code(context) is grpc.StatusCode.DEADLINE_EXCEEDED:
                        # A call that timed out (a stall in the store, say) teaches the
                        # method's cost at most the budget it had, never the stall behind it.
                        ran = min(ran, max(0.0, left))
                    queue.leave(ran)

            return admitted

        return _wrap(continuation, details, wrapper)


# --- errors ------------------------------------------------------------------------------


class Undecodable:
    """Stands in for a request whose bytes are not a valid message (bad UTF-8, truncation).

    gRPC would answer INTERNAL for a deserializer exception, before any interceptor runs;
    deserializing leniently lets ErrorInterceptor answer INVALID_ARGUMENT instead."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _lenient(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # protobuf's DecodeError, or anything a parser raises
            return Undecodable(type(exc).__name__)

    return parse


def _refuse_undecodable(request: Any, context: grpc.ServicerContext, method: str) -> None:
    if isinstance(request, Undecodable):
        abort(
            context,
            build_status(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request is not a valid message for {method} "
                f"({request.error}); check string fields are UTF-8",
                reason="MALFORMED_REQUEST",
            ),
        )
    if isinstance(request, Message):
        limits.check(request)


def _mapped_stream(stream: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
    try:
        yield from stream
    except Exception as exc:
        if _aborted(context):
            raise
        abort(context, status_for_exception(exc))


class ErrorInterceptor(grpc.ServerInterceptor):
    """Domain exceptions -> rich status; unexpected ones -> INTERNAL without a trace. A
    known key refused a resource (a gate outside its scope) goes to `on_denied`, the
    failed-authentication audit, as an unknown key does: a stolen gate key tried at other
    gates is an attack on the payment path."""

    def __init__(self, on_denied: OnFailure | None = None) -> None:
        self._on_denied = on_denied

    def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        def wrapper(behavior: Behavior, d: grpc.HandlerCallDetails) -> Behavior:
            def mapped(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    _refuse_undecodable(request, context, d.method)
                    return behavior(request, context)
                except Exception as exc:
                    if _aborted(context):
                        raise  # the servicer already chose a status
                    if isinstance(exc, PermissionDenied) and self._on_denied is not None:
                        self._on_denied(context.peer(), principal.actor(), exc.reason)
                    abort(context, status_for_exception(exc))

            return mapped

        def streamed(behavior: Behavior, d: grpc.HandlerCallDetails) -> Behavior:
            # The servicer sets its stream up when called (a watch fixes where it starts);
            # errors come then, or later as the stream is read.
            return wrapper(lambda r, c: _mapped_stream(behavior(r, c), c), d)

        handler = _wrap(continuation, details, wrapper, streamed)
        if handler is None or (handler.unary_unary is None and handler.unary_stream is None):
            return handler
        return _replaced(handler, request_deserializer=_lenient(handler.request_deserializer))
