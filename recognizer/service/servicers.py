"""Thin servicers: decode, call one pipeline or gallery function, convert the result.

All validation and domain logic lives below; errors are mapped by ErrorInterceptor.
"""

from __future__ import annotations

import time

import grpc

from recognizer.imaging import decode
from recognizer.service import convert
from recognizer.service.interceptors import Metrics
from recognizer.service.runtime import Runtime
from recognizer.v1 import (
    gate_pb2,
    gate_pb2_grpc,
    identity_pb2_grpc,
    recognition_pb2,
    recognition_pb2_grpc,
)


class RecognitionServicer(recognition_pb2_grpc.RecognitionServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self._limits = runtime.config.image_limits

    def DetectFaces(
        self, request: recognition_pb2.DetectFacesRequest, context: grpc.ServicerContext
    ) -> recognition_pb2.DetectFacesResponse:
        image = decode(request.image, self._limits, "image")
        faces = self._rt.engines.faces
        found = faces.detect(image, convert.selection(request.selection))
        return recognition_pb2.DetectFacesResponse(
            faces=[convert.face(f, q) for f, q in found],
            image_width=image.shape[1],
            image_height=image.shape[0],
            models=convert.model_versions(faces.model_versions),
        )

    def ReadPlates(
        self, request: recognition_pb2.ReadPlatesRequest, context: grpc.ServicerContext
    ) -> recognition_pb2.ReadPlatesResponse:
        image = decode(request.image, self._limits, "image")
        plates = self._rt.engines.plates
        reads = plates.read(image, max_candidates=request.max_candidates or 5)
        return recognition_pb2.ReadPlatesResponse(
            plates=[convert.plate(p) for p in reads],
            image_width=image.shape[1],
            image_height=image.shape[0],
            models=convert.model_versions(plates.model_versions),
        )


class IdentityServicer(identity_pb2_grpc.IdentityServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime


class GateServicer(gate_pb2_grpc.GateServiceServicer):
    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime


class AdminServicer(gate_pb2_grpc.AdminServiceServicer):
    def __init__(self, runtime: Runtime, metrics: Metrics) -> None:
        self._rt = runtime
        self._metrics = metrics

    def GetMetrics(
        self, request: gate_pb2.GetMetricsRequest, context: grpc.ServicerContext
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
        )
