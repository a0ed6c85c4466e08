"""Thin servicers: check the request's own fields, decode, call one domain function, convert
the result.

What a servicer checks itself is the message's shape (page and list bounds, required fields,
the gate a key may act for); the domain below validates what it means (images, plates,
identities, policies). Errors of either are mapped by ErrorInterceptor.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import grpc

from recognizer import telemetry
from recognizer.errors import FailedPrecondition, InvalidArgument
from recognizer.imaging import decode
from recognizer.service import convert, personal, principal
from recognizer.service.interceptors import Metrics
from recognizer.service.runtime import Runtime
from recognizer.service.watch import DecisionFeed
from recognizer.store.ports import Audit
from recognizer.store.rows import AuditEntry, DecisionRow
from recognizer.v1 import (
    gate_pb2,
    gate_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
    recognition_pb2,
    recognition_pb2_grpc,
)

Ctx = grpc.ServicerContext


class RecognitionServicer(recognition_pb2_grpc.RecognitionServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self._limits = runtime.config.limits_for

    def DetectFaces(
        self, request: recognition_pb2.DetectFacesRequest, context: Ctx
    ) -> recognition_pb2.DetectFacesResponse:
        image = decode(request.image, self._limits("DetectFaces"), "image")
        faces = self._rt.engines.faces
        found = faces.detect(image, convert.selection(request.selection))
        return recognition_pb2.DetectFacesResponse(
            # (face, quality, liveness); a pipeline without the stage may give (face, quality)
            faces=[convert.face(*item) for item in found],
            image_width=image.shape[1],
            image_height=image.shape[0],
            models=convert.model_versions(faces.model_versions),
        )

    def ReadPlates(
        self, request: recognition_pb2.ReadPlatesRequest, context: Ctx
    ) -> recognition_pb2.ReadPlatesResponse:
        image = decode(request.image, self._limits("ReadPlates"), "image")
        if not 0 <= request.max_candidates <= 20:
            raise InvalidArgument("max_candidates must be within 0..20", field="max_candidates")
        plates = self._rt.engines.plates
        reads = plates.read(image, max_candidates=request.max_candidates or 5)
        return recognition_pb2.ReadPlatesResponse(
            plates=[convert.plate(p) for p in reads],
            image_width=image.shape[1],
            image_height=image.shape[0],
            models=convert.model_versions(plates.model_versions),
        )

    def VerifyFace(
        self, request: recognition_pb2.VerifyFaceRequest, context: Ctx
    ) -> recognition_pb2.VerifyFaceResponse:
        image = decode(request.image, self._limits("VerifyFace"), "image")
        eng = self._rt.engines
        threshold = request.threshold if request.HasField("threshold") else None
        r = eng.identity.verify(request.identity_id, image, threshold)
        return recognition_pb2.VerifyFaceResponse(
            score=r.score,
            match=r.match,
            estimated_fmr=r.estimated_fmr,
            threshold=r.threshold,
            face=convert.face(r.face, r.quality, r.liveness),
            models=convert.model_versions(eng.faces.model_versions),
        )

    def IdentifyFace(
        self, request: recognition_pb2.IdentifyFaceRequest, context: Ctx
    ) -> recognition_pb2.IdentifyFaceResponse:
        image = decode(request.image, self._limits("IdentifyFace"), "image")
        eng = self._rt.engines
        threshold = request.threshold if request.HasField("threshold") else None
        r = eng.identity.identify(image, request.top_k, threshold)
        personal.audit_reads(eng.gallery.store, (c.identity_id for c in r.candidates))
        response = recognition_pb2.IdentifyFaceResponse(
            candidates=[
                recognition_pb2.IdentifyCandidate(
                    identity_id=c.identity_id,
                    display_name=c.display_name,
                    score=c.score,
                    estimated_fmr=c.estimated_fmr,
                    estimated_fpir=c.estimated_fpir,
                    gallery_size=r.gallery_size,
                )
                for c in r.candidates
            ],
            unknown=r.unknown,
            threshold=r.threshold,
            face=convert.face(r.face, r.quality, r.liveness),
            best_score=r.best_score,
            models=convert.model_versions(eng.faces.model_versions),
        )
        return personal.candidates(response)


class IdentityServicer(identity_pb2_grpc.IdentityServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self._limits = runtime.config.limits_for("EnrollFace")

    def _identity(self, identity_id: str) -> identity_pb2.Identity:
        store = self._rt.engines.gallery.store
        return personal.identity(
            convert.identity(
                store.get_identity(identity_id),
                store.template_labels(identity_id),
                store.plates_for(identity_id),
                store.payments_for(identity_id),
            )
        )

    def CreateIdentity(
        self, request: identity_pb2.CreateIdentityRequest, context: Ctx
    ) -> identity_pb2.Identity:
        store = self._rt.engines.gallery.store
        row = store.create_identity(
            request.display_name,
            request.external_ref,
            dict(request.metadata),
            audit=AuditEntry(principal.actor(), "create_identity", ""),  # target: the new id
        )
        return self._identity(row.id)

    def GetIdentity(
        self, request: identity_pb2.GetIdentityRequest, context: Ctx
    ) -> identity_pb2.Identity:
        found = self._identity(request.identity_id)
        personal.audit_reads(self._rt.engines.gallery.store, [found.identity_id])
        return found

    def ListIdentities(
        self, request: identity_pb2.ListIdentitiesRequest, context: Ctx
    ) -> identity_pb2.ListIdentitiesResponse:
        if not 0 <= request.page_size <= 1000:
            raise InvalidArgument("page_size must be within 0..1000", field="page_size")
        size = request.page_size or 100
        store = self._rt.engines.gallery.store
        rows = store.list_identities(size, request.page_token)
        found = [self._identity(r.id) for r in rows]
        personal.audit_reads(store, (i.identity_id for i in found))
        return identity_pb2.ListIdentitiesResponse(
            identities=found, next_page_token=rows[-1].id if len(rows) == size else ""
        )

    def DeleteIdentity(
        self, request: identity_pb2.DeleteIdentityRequest, context: Ctx
    ) -> identity_pb2.DeleteIdentityResponse:
        gallery = self._rt.engines.gallery
        counts = gallery.delete_identity(
            request.identity_id,
            AuditEntry(principal.actor(), "delete_identity", request.identity_id),
        )
        return identity_pb2.DeleteIdentityResponse(
            templates_removed=counts.templates,
            plates_removed=counts.plates,
            payments_removed=counts.payments,
        )

    def EnrollFace(
        self, request: identity_pb2.EnrollFaceRequest, context: Ctx
    ) -> identity_pb2.EnrollFaceResponse:
        images = [
            decode(data, self._limits, f"images[{i}]") for i, data in enumerate(request.images)
        ]
        eng = self._rt.engines
        enrolled = eng.identity.enroll(
            request.identity_id,
            images,
            force=request.force,
            source=request.source,
            # The store adds the new labels as "templates".
            audit=AuditEntry(
                principal.actor(), "enroll_face", request.identity_id, {"force": request.force}
            ),
        )
        return identity_pb2.EnrollFaceResponse(
            identity_id=request.identity_id,
            faces=[
                identity_pb2.EnrolledFace(
                    template_id=str(e.template_id),
                    face=convert.face(e.face, e.quality, e.liveness),
                    image_index=e.image_index,
                )
                for e in enrolled
            ],
            models=convert.model_versions(eng.faces.model_versions),
        )

    def RemoveFace(
        self, request: identity_pb2.RemoveFaceRequest, context: Ctx
    ) -> identity_pb2.RemoveFaceResponse:
        gallery = self._rt.engines.gallery
        remaining = gallery.remove_template(
            request.identity_id,
            convert.label(request.template_id),
            AuditEntry(
                principal.actor(),
                "remove_face",
                request.identity_id,
                {"template": request.template_id},
            ),
        )
        return identity_pb2.RemoveFaceResponse(remaining=remaining)

    def BindPlate(
        self, request: identity_pb2.BindPlateRequest, context: Ctx
    ) -> identity_pb2.PlateBinding:
        store = self._rt.engines.gallery.store
        plate = self._rt.engines.parse_plate(request.plate, "plate")
        store.bind_plate(
            request.identity_id,
            plate,
            self._rt.config.allow_shared_plates,
            AuditEntry(principal.actor(), "bind_plate", request.identity_id, {"plate": plate}),
        )
        return identity_pb2.PlateBinding(identity_id=request.identity_id, plate=plate)

    def UnbindPlate(
        self, request: identity_pb2.UnbindPlateRequest, context: Ctx
    ) -> identity_pb2.UnbindPlateResponse:
        store = self._rt.engines.gallery.store
        # Lenient on purpose: a malformed plate bound by an older release can still be removed.
        plate = self._rt.engines.normalize_plate(request.plate)
        store.unbind_plate(
            request.identity_id,
            plate,
            AuditEntry(principal.actor(), "unbind_plate", request.identity_id, {"plate": plate}),
        )
        return identity_pb2.UnbindPlateResponse()

    def LookupPlate(
        self, request: identity_pb2.LookupPlateRequest, context: Ctx
    ) -> identity_pb2.LookupPlateResponse:
        plate = self._rt.engines.parse_plate(request.plate, "plate")
        store = self._rt.engines.gallery.store
        ids = store.identities_for_plate(plate)
        personal.audit_reads(store, ids)  # who holds a plate is personal
        return personal.plate_lookup(
            identity_pb2.LookupPlateResponse(plate=plate, identity_ids=ids)
        )

    def BindPayment(
        self, request: identity_pb2.BindPaymentRequest, context: Ctx
    ) -> identity_pb2.PaymentBinding:
        if not request.payment_ref:
            raise InvalidArgument("payment_ref is required", field="payment_ref")
        if request.ceiling_minor < 0:
            raise InvalidArgument("ceiling_minor must be >= 0", field="ceiling_minor")
        factors = convert.factor_name(request.factors)
        store = self._rt.engines.gallery.store
        store.get_identity(request.identity_id)
        row = store.bind_payment(
            request.identity_id,
            request.payment_ref,
            factors,
            request.ceiling_minor,
            # The store adds the new binding id as "binding".
            AuditEntry(
                principal.actor(), "bind_payment", request.identity_id, {"factors": factors}
            ),
        )
        return convert.payment(row)

    def UnbindPayment(
        self, request: identity_pb2.UnbindPaymentRequest, context: Ctx
    ) -> identity_pb2.UnbindPaymentResponse:
        store = self._rt.engines.gallery.store
        store.unbind_payment(
            request.identity_id,
            request.binding_id,
            AuditEntry(
                principal.actor(),
                "unbind_payment",
                request.identity_id,
                {"binding": request.binding_id},
            ),
        )
        return identity_pb2.UnbindPaymentResponse()


class GateServicer(gate_pb2_grpc.GateServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime  # the gate engine decodes its frames, with Authorize's limits

    def Authorize(
        self, request: gate_pb2.AuthorizeRequest, context: Ctx
    ) -> gate_pb2.AuthorizeResponse:
        principal.require_gate(request.gate_id)
        gate_request = convert.gate_request(request, self._rt.config.authorize_max_bytes)
        eng = self._rt.engines
        if eng.gate is None:
            raise FailedPrecondition(
                "no fusion calibration for this profile; run scripts/calibrate_fusion.py",
                reason="FUSION_NOT_CALIBRATED",
            )
        result = eng.gate.authorize(gate_request)
        response = gate_pb2.AuthorizeResponse.FromString(result.payload)
        response.replayed = result.replayed
        response.event_id = request.event_id
        if not result.replayed:
            telemetry.observe_decision(
                response.policy_id,
                gate_pb2.Outcome.Name(response.outcome).removeprefix("OUTCOME_").lower(),
                (r.code for r in response.reasons),
                request.amount_minor,
                # The only currency the deciding policy accepts (an empty one means it).
                self._rt.config.policies.for_gate(request.gate_id).currency,
            )
        if response.identity_id:  # a payer's payment reference and plate went back
            personal.audit_reads(eng.gallery.store, [response.identity_id])  # admin keys only
        return response


class AdminServicer(gate_pb2_grpc.AdminServiceServicer):
    def __init__(self, runtime: Runtime, metrics: Metrics, feed: DecisionFeed) -> None:
        self._rt = runtime
        self._metrics = metrics
        self._feed = feed

    def ListDecisions(
        self, request: gate_pb2.ListDecisionsRequest, context: Ctx
    ) -> gate_pb2.ListDecisionsResponse:
        if not 0 <= request.limit <= 1000:
            raise InvalidArgument("limit must be within 0..1000", field="limit")
        since = (
            convert.timestamp_ns(request.since, "since") / 1e9 if request.HasField("since") else 0.0
        )
        store = self._rt.engines.gallery.store
        rows = store.list_decisions(
            gate_id=request.gate_id,
            identity_id=request.identity_id,
            since=since,
            limit=request.limit or 100,
        )
        # Decisions carry plates and payment references; an unidentified one is read as "".
        personal.audit_reads(store, (r.identity_id for r in rows))
        return gate_pb2.ListDecisionsResponse(decisions=[convert.decision_record(r) for r in rows])

    def ListAudit(
        self, request: gate_pb2.ListAuditRequest, context: Ctx
    ) -> gate_pb2.ListAuditResponse:
        if not 0 <= request.page_size <= 1000:
            raise InvalidArgument("page_size must be within 0..1000", field="page_size")
        since = convert.timestamp_ns(request.since, "since") if request.HasField("since") else 0
        until = convert.timestamp_ns(request.until, "until") if request.HasField("until") else 0
        if request.HasField("until") and until <= since:
            raise InvalidArgument("until must be after since", field="until")
        size = request.page_size or 100
        store = self._rt.engines.gallery.store
        rows = store.list_audit(
            size,
            since=since / 1e9,
            until=until / 1e9,
            actor=request.key_name,
            target=request.identity_id,
            before_id=convert.page_after(request.page_token),
        )
        # The audit holds plates (bind_plate) and who did what: reading it is audited too.
        personal.audit_reads(store, [request.identity_id])
        return gate_pb2.ListAuditResponse(
            records=[convert.audit_record(r) for r in rows],
            next_page_token=str(rows[-1].id) if len(rows) == size else "",
        )

    def WatchDecisions(
        self, request: gate_pb2.WatchDecisionsRequest, context: Ctx
    ) -> Iterator[gate_pb2.WatchDecisionsResponse]:
        rows = self._feed.watch(request.gate_id, request.after_decision_id, context.is_active)
        return self._watched(self._rt.engines.gallery.store, rows)

    @staticmethod
    def _watched(
        store: Audit, rows: Iterator[DecisionRow]
    ) -> Iterator[gate_pb2.WatchDecisionsResponse]:
        for r in rows:
            # Each decision carries a plate and a payment reference: an audited read.
            personal.audit_reads(store, [r.identity_id])
            yield gate_pb2.WatchDecisionsResponse(decision=convert.decision_record(r))

    def GetMetrics(
        self, request: gate_pb2.GetMetricsRequest, context: Ctx
    ) -> gate_pb2.GetMetricsResponse:
        return gate_pb2.GetMetricsResponse(
            methods=[
                gate_pb2.MethodMetrics(
                    method=name,
                    calls=s.calls,
                    errors=s.errors,
                    wall_seconds=s.wall_seconds,
                    cpu_seconds=s.cpu_seconds,
                    inference_seconds=s.inference_seconds,
                )
                for name, s in sorted(self._metrics.snapshot().items())
            ],
            process_cpu_seconds=time.process_time(),
            gallery=self._gallery_stats(),
            rss_bytes=_rss_bytes(),
            replica=self._replica_lag(),
        )

    def _replica_lag(self) -> gate_pb2.ReplicaLag | None:
        if not self._rt.wait(0):
            return None
        follower, bound = self._rt.engines.follower, self._rt.config.replica_max_lag_s
        if follower is None:
            return gate_pb2.ReplicaLag(shared_store=False, max_seconds=bound, fresh=True)
        lag = follower.lag()
        return gate_pb2.ReplicaLag(
            shared_store=True,
            changes=lag.changes,
            seconds=lag.seconds,
            max_seconds=bound,
            fresh=lag.within(bound),
        )

    def _gallery_stats(self) -> gate_pb2.GalleryStats | None:
        if not self._rt.wait(0) or self._rt.engines.gallery is None:
            return None
        st = self._rt.engines.gallery.stats()
        return gate_pb2.GalleryStats(
            model=st.model,
            index_kind=st.kind,
            index_size=st.ntotal,
            store_templates=st.store_templates,
            identities=st.identities,
            index_watermark=st.watermark,
            store_seq=st.store_seq,
            consistent=st.consistent,
        )


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0
