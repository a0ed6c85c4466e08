"""Container health check: exit 0 only when the server's gRPC health service says SERVING.

The overall status (service "") is SERVING once the models and the index are loaded; it
needs no API key. The port is RECOGNIZER_PORT's (default 50051), on the loopback address.
"""

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

target = f"127.0.0.1:{os.environ.get('RECOGNIZER_PORT', '50051')}"
try:
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5.0
        )
except grpc.RpcError as exc:
    print(f"{target}: {exc.code().name}", file=sys.stderr)
    sys.exit(1)
status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
print(f"{target}: {status}")
sys.exit(0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1)
