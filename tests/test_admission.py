"""Admission gate and call budgets, with a fake gRPC context: queueing, queue timeouts,
refusal by expected finish time, RetryInfo from the estimate, fairness between methods,
and the budget that admitted calls carry into domain code."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from recognizer import deadline
from recognizer.deadline import Budget, RecentCosts
from recognizer.errors import DeadlineExceeded
from recognizer.service.admission import MethodQueue, QueueOutcome
from recognizer.service.interceptors import QUEUE_WAIT_HEADER, AdmissionInterceptor
from tests.helpers import Clock, eventually

M = "/recognizer.v1.RecognitionService/DetectFaces"
OTHER = "/recognizer.v1.RecognitionService/ReadPlates"
WAIT_S = 10.0  # generous bound for a join on a loaded machine


class Aborted(Exception):
    pass


class FakeContext:
    """The parts of grpc.ServicerContext the admission interceptor uses."""

    def __init__(self, remaining: float | None = None) -> None:
        self._expires = None if remaining is None else time.monotonic() + remaining
        self.active = True
        self.trailing: Any = None
        self.status: grpc.Status | None = None

    def time_remaining(self) -> float:
        if self._expires is None:
            return float("inf")  # what grpc reports for a call without a deadline
        return max(0.0, self._expires - time.monotonic())

    def is_active(self) -> bool:
        return self.active

    def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        raise Aborted(status.code)

    def set_trailing_metadata(self, md: Any) -> None:
        self.trailing = md

    def code(self) -> grpc.StatusCode | None:
        return self.status.code if self.status else None


def handler(interceptor: AdmissionInterceptor, method: str, behavior: Callable) -> Callable:
    details = SimpleNamespace(method=method, invocation_metadata=())
    h = interceptor.intercept_service(
        lambda d: grpc.unary_unary_rpc_method_handler(behavior), details
    )
    return h.unary_unary


def details_of(ctx: FakeContext) -> tuple[str, float | None]:
    """(ErrorInfo reason, RetryInfo seconds) of the status a call was aborted with."""
    assert ctx.status is not None
    reason, delay = "", None
    md = dict(ctx.status.trailing_metadata)
    status = rpc_status.status_pb2.Status.FromString(md["grpc-status-details-bin"])
    for d in status.details:
        if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            d.Unpack(info)
            reason = info.reason
        if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            d.Unpack(retry)
            delay = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    return reason, delay


class Holder:
    """A behaviour that holds its slot until released, recording every call it runs."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started: list[str] = []
        self.budgets: list[Budget | None] = []
        self.lock = threading.Lock()

    def __call__(self, request: str, context: Any) -> str:
        with self.lock:
            self.started.append(request)
            self.budgets.append(deadline.current())
        assert self.release.wait(WAIT_S)
        return f"done {request}"


def call_in_thread(fn: Callable, request: str, ctx: FakeContext) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def run() -> None:
        t0 = time.monotonic()
        try:
            out["response"] = fn(request, ctx)
        except Aborted:
            out["code"] = ctx.code()
        out["took"] = time.monotonic() - t0

    out["thread"] = threading.Thread(target=run, daemon=True)
    out["thread"].start()
    return out


def fixed_jitter() -> float:
    return 1.0


def test_a_queued_call_is_admitted_when_a_slot_frees() -> None:
    adm = AdmissionInterceptor(1, 5, max_queue=1, jitter=fixed_jitter)
    work = Holder()
    fn = handler(adm, M, work)
    a = call_in_thread(fn, "a", FakeContext())
    eventually(lambda: work.started == ["a"])
    b = call_in_thread(fn, "b", FakeContext(remaining=30))
    eventually(lambda: adm.queue(M).waiting == 1)
    time.sleep(0.05)
    assert work.started == ["a"], "a queued call must not start while the slot is taken"
    work.release.set()
    for c in (a, b):
        c["thread"].join(WAIT_S)
    assert a["response"] == "done a" and b["response"] == "done b"
    assert adm.queue(M).running == 0 and adm.queue(M).waiting == 0


def test_admitted_calls_report_their_queue_wait() -> None:
    adm = AdmissionInterceptor(1, 5, max_queue=1, jitter=fixed_jitter)
    work = Holder()
    fn = handler(adm, M, work)
    call_in_thread(fn, "a", FakeContext())
    eventually(lambda: work.started == ["a"])
    ctx = FakeContext(remaining=30)
    b = call_in_thread(fn, "b", ctx)
    eventually(lambda: adm.queue(M).waiting == 1)
    time.sleep(0.1)
    work.release.set()
    b["thread"].join(WAIT_S)
    (key, value), *_ = ctx.trailing
    assert key == QUEUE_WAIT_HEADER and float(value) >= 100.0


def test_a_queue_wait_that_reaches_the_deadline_ends_before_any_work() -> None:
    adm = AdmissionInterceptor(1, 5, max_queue=1, jitter=fixed_jitter)
    work = Holder()
    fn = handler(adm, M, work)
    a = call_in_thread(fn, "a", FakeContext())
    eventually(lambda: work.started == ["a"])
    b = call_in_thread(fn, "b", FakeContext(remaining=0.3))  # no estimate yet: it queues
    b["thread"].join(WAIT_S)
    assert b["code"] is grpc.StatusCode.DEADLINE_EXCEEDED
    assert b["took"] >= 0.25, "it waited for a slot until its deadline no longer allowed it"
    assert adm.queue(M).waiting == 0
    work.release.set()
    a["thread"].join(WAIT_S)
    assert work.started == ["a"], "the timed-out call never ran"


def test_a_deadline_shorter_than_the_estimated_wait_is_refused_at_once() -> None:
    costs = RecentCosts(half_life_s=1e9)
    costs.observe(M, 2.0)  # recent calls took 2 s each
    adm = AdmissionInterceptor(1, 5, max_queue=4, costs=costs, jitter=fixed_jitter)
    work = Holder()
    fn = handler(adm, M, work)
    a = call_in_thread(fn, "a", FakeContext())
    eventually(lambda: work.started == ["a"])
    # Waiting ~2 s for the slot, then 2 s of work: past a 3-s deadline, so no queueing.
    ctx = FakeContext(remaining=3.0)
    b = call_in_thread(fn, "b", ctx)
    b["thread"].join(WAIT_S)
    assert b["code"] is grpc.StatusCode.RESOURCE_EXHAUSTED
    # Answered while "a" still holds the only slot: refused at once, not after queueing.
    assert not b["thread"].is_alive() and a["thread"].is_alive()
    reason, delay = details_of(ctx)
    assert reason == "OVERLOADED"
    assert delay == pytest.approx(2.0), "RetryInfo carries the estimated wait"
    # With time for the wait and the work, the same call queues instead.
    c = call_in_thread(fn, "c", FakeContext(remaining=30))
    eventually(lambda: adm.queue(M).waiting == 1)
    work.release.set()
    for t in (a, c):
        t["thread"].join(WAIT_S)
    assert work.started == ["a", "c"]


def test_a_deadline_that_cannot_hold_the_work_is_deadline_exceeded() -> None:
    costs = RecentCosts(half_life_s=1e9)
    costs.observe(M, 1.0)
    adm = AdmissionInterceptor(2, 5, max_queue=2, costs=costs)
    work = Holder()
    work.release.set()
    ctx = FakeContext(remaining=0.5)
    with pytest.raises(Aborted):
        handler(adm, M, work)("a", ctx)
    assert ctx.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert details_of(ctx) == ("DEADLINE_TOO_SHORT", None)
    assert work.started == []


def test_retry_delay_grows_with_the_queue_ahead() -> None:
    costs = RecentCosts(half_life_s=1e9)
    costs.observe(M, 0.6)
    gate = MethodQueue(M, 2, 2, costs, jitter=fixed_jitter)
    assert gate.enter(None).outcome is QueueOutcome.ADMITTED
    assert gate.enter(None).outcome is QueueOutcome.ADMITTED
    # Both slots busy, nobody queued: the next slot frees in about 0.6 s / 2.
    queued = [threading.Thread(target=gate.enter, args=(30.0,), daemon=True) for _ in range(2)]
    for t in queued:
        t.start()
    eventually(lambda: gate.waiting == 2)
    full = gate.enter(30.0)
    assert full.outcome is QueueOutcome.FULL
    assert full.retry_after_s == pytest.approx(3 * 0.6 / 2)  # two ahead, then its own turn
    for _ in range(4):
        gate.leave()
    for t in queued:
        t.join(WAIT_S)
    assert gate.running == 0 and gate.waiting == 0


def test_retry_delays_are_jittered_around_the_estimate() -> None:
    costs = RecentCosts(half_life_s=1e9)
    costs.observe(M, 1.0)
    gate = MethodQueue(M, 1, 0, costs)
    assert gate.enter(None).outcome is QueueOutcome.ADMITTED
    delays = {gate.enter(None).retry_after_s for _ in range(50)}
    assert len(delays) > 10, "callers refused together must not all retry together"
    assert all(0.8 <= d <= 1.2 for d in delays), delays
    gate.leave()


def test_a_flood_of_one_method_leaves_the_others_their_slots() -> None:
    adm = AdmissionInterceptor(1, 5, max_queue=0)
    work = Holder()
    flood = handler(adm, M, work)
    a = call_in_thread(flood, "a", FakeContext())
    eventually(lambda: work.started == ["a"])
    refused = FakeContext(remaining=30)
    with pytest.raises(Aborted):
        flood("b", refused)
    assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    other = FakeContext(remaining=30)
    assert handler(adm, OTHER, lambda r, c: "other ok")("c", other) == "other ok"
    work.release.set()
    a["thread"].join(WAIT_S)


def test_a_caller_that_goes_away_leaves_the_queue() -> None:
    adm = AdmissionInterceptor(1, 5, max_queue=2)
    work = Holder()
    fn = handler(adm, M, work)
    a = call_in_thread(fn, "a", FakeContext())
    eventually(lambda: work.started == ["a"])
    ctx = FakeContext(remaining=30)
    b = call_in_thread(fn, "b", ctx)
    eventually(lambda: adm.queue(M).waiting == 1)
    ctx.active = False  # the client cancelled
    b["thread"].join(WAIT_S)
    assert b["code"] is grpc.StatusCode.DEADLINE_EXCEEDED
    assert adm.queue(M).waiting == 0
    work.release.set()
    a["thread"].join(WAIT_S)
    assert work.started == ["a"]


def test_admitted_calls_run_inside_a_budget_that_sees_cancellation() -> None:
    adm = AdmissionInterceptor(2, 5, max_queue=0)
    ctx = FakeContext(remaining=20)
    seen: list[float | None] = []

    def behavior(request: str, context: Any) -> str:
        budget = deadline.current()
        assert budget is not None
        seen.append(budget.remaining())
        deadline.check("first stage")
        context.active = False  # the client goes away mid-call
        with pytest.raises(DeadlineExceeded):
            deadline.check("second stage")
        return "ok"

    assert handler(adm, M, behavior)("a", ctx) == "ok"
    assert seen[0] is not None and 15 < seen[0] <= 20
    assert deadline.current() is None, "the budget ends with the call"


def test_a_call_without_a_deadline_has_an_open_budget() -> None:
    adm = AdmissionInterceptor(2, 5, max_queue=0)
    work = Holder()
    work.release.set()
    handler(adm, M, work)("a", FakeContext())
    assert work.budgets[0] is not None and work.budgets[0].remaining() is None


# --- budgets and recent costs ---------------------------------------------------------------


def test_recent_costs_average_and_fade() -> None:
    clock = Clock()
    costs = RecentCosts(alpha=0.5, half_life_s=2.0, clock=clock)
    assert costs.expected("x") == 0.0
    costs.observe("x", 1.0)
    costs.observe("x", 3.0)
    assert costs.expected("x") == pytest.approx(2.0)
    clock.now += 2.0  # unobserved for one half-life: a burst's cost must not stick
    assert costs.expected("x") == pytest.approx(1.0)


def test_a_stage_whose_recent_cost_does_not_fit_is_refused() -> None:
    costs = RecentCosts(half_life_s=1e9)
    costs.observe("embed", 5.0)
    ran: list[str] = []
    with deadline.running(Budget.after(1.0, costs=costs)):
        with deadline.stage("detect"):  # never timed: only the deadline itself counts
            ran.append("detect")
        with pytest.raises(DeadlineExceeded) as err, deadline.stage("embed"):
            ran.append("embed")
    assert ran == ["detect"]
    assert err.value.reason == "DEADLINE_EXCEEDED"
    assert 0 < costs.expected("detect") < 1.0, "the stage that ran was timed"


def test_checks_outside_a_call_do_nothing() -> None:
    deadline.check("anything", need_s=1e9)
    with deadline.stage("anything"):
        pass


def test_activity_and_idleness_for_housekeeping() -> None:
    adm = AdmissionInterceptor(1, 5, max_queue=1)
    assert adm.idle() and adm.activity() == 0
    work = Holder()
    fn = handler(adm, M, work)
    a = call_in_thread(fn, "a", FakeContext())
    eventually(lambda: work.started == ["a"])
    assert not adm.idle()
    handler(adm, OTHER, lambda r, c: "ok")("b", FakeContext())
    work.release.set()
    a["thread"].join(WAIT_S)
    assert adm.idle() and adm.activity() == 2


def test_work_left_behind_in_other_threads_stops_once_the_call_has_answered() -> None:
    adm = AdmissionInterceptor(2, 5, max_queue=0)
    go_on = threading.Event()
    outcome: list[str] = []

    def branch() -> None:
        assert go_on.wait(WAIT_S)
        try:
            deadline.check("next stage")
            outcome.append("ran")
        except DeadlineExceeded:
            outcome.append("stopped")

    def behavior(request: str, context: Any) -> str:
        ctx = contextvars.copy_context()  # as accounting.submit hands work to a pool
        threading.Thread(target=ctx.run, args=(branch,), daemon=True).start()
        raise DeadlineExceeded("a sibling branch ran out of time")

    with pytest.raises(DeadlineExceeded):
        handler(adm, M, behavior)("a", FakeContext(remaining=30))
    go_on.set()
    eventually(lambda: bool(outcome))
    assert outcome == ["stopped"]
