"""Server assembly: interceptors, servicers, health, reflection; graceful stop on SIGTERM."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from recognizer import __version__, telemetry, tracing
from recognizer import models as model_store
from recognizer.config import Config
from recognizer.memory import IdleTrim, limit_malloc_arenas
from recognizer.service.authfail import FailedAuthAudit, FailureWindow
from recognizer.service.interceptors import (
    AdmissionInterceptor,
    AuthInterceptor,
    ErrorInterceptor,
    Metrics,
    ObserveInterceptor,
)
from recognizer.service.runtime import Runtime
from recognizer.service.servicers import (
    AdminServicer,
    GateServicer,
    IdentityServicer,
    RecognitionServicer,
)
from recognizer.service.watch import DecisionFeed
from recognizer.store.crypto import TemplateKeyError
from recognizer.store.faults import DatabaseUnreachable
from recognizer.v1 import (
    gate_pb2,
    gate_pb2_grpc,
    identity_pb2,
    identity_pb2_grpc,
    recognition_pb2,
    recognition_pb2_grpc,
)

log = logging.getLogger("recognizer.server")


class PortBusy(RuntimeError):
    """A port the configuration names cannot be bound: one line for the operator, naming
    the port and the setting that sets it (`recognizer serve` exits 2 with it)."""

    def __init__(self, address: str, setting: str, flag: str) -> None:
        env = f"RECOGNIZER_{setting.upper()}"
        super().__init__(
            f"cannot listen on {address} (in use, or not an address of this host): "
            f"set another with {flag} or {env} (config `{setting}`)"
        )
        self.address = address
        self.setting = setting


class LoadFailed(RuntimeError):
    """The node's models or store could not be loaded: a node that can never serve stops
    (`recognizer serve` exits 2 with this line), so its supervisor restarts it and alerts,
    rather than leaving it NOT_SERVING for good."""


def _serving(ok: bool) -> Any:
    return (
        health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
    )


SERVICE_NAMES = (
    identity_pb2.DESCRIPTOR.services_by_name["IdentityService"].full_name,
    recognition_pb2.DESCRIPTOR.services_by_name["RecognitionService"].full_name,
    gate_pb2.DESCRIPTOR.services_by_name["GateService"].full_name,
    gate_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)
# The services that search the face index, and so follow a replica's freshness.
REPLICA_SERVICES = (SERVICE_NAMES[1], SERVICE_NAMES[2])
# The services that write to the store, and so follow its health (a full disk, the database
# out of reach): a load balancer moves their calls to a node that can write.
WRITING_SERVICES = (SERVICE_NAMES[0], SERVICE_NAMES[2])


class HealthState:
    """What each service's health follows: models loaded, the replica fresh (1:N services),
    the store reachable and writable (writing services), and not draining (all). One
    place computes every service's status from them."""

    def __init__(self, servicer: health.HealthServicer) -> None:
        self._servicer = servicer
        self._lock = threading.Lock()
        self.loaded = False
        self.replica_fresh = True
        self.store_writable = True
        self.draining = False

    def _ok(self, service: str) -> bool:
        ok = self.loaded and not self.draining
        if service in REPLICA_SERVICES:
            ok = ok and self.replica_fresh
        if service in WRITING_SERVICES:
            ok = ok and self.store_writable
        return ok

    def update(self, **changes: bool) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(self, name, value)
            for service in ("", *SERVICE_NAMES):
                self._servicer.set(service, _serving(self._ok(service)))

    def ready(self) -> bool:
        """What /readyz answers: every writing service SERVING (models loaded, store
        reachable and writable, replica fresh, not draining)."""
        with self._lock:
            return all(self._ok(service) for service in WRITING_SERVICES)


def _no_admission() -> bool:
    return True


@dataclass(slots=True)
class RunningServer:
    server: grpc.Server
    port: int
    runtime: Runtime
    health: health.HealthServicer
    metrics: Metrics
    health_state: HealthState
    trimmer: IdleTrim | None = None
    metrics_http: Any = None  # the Prometheus endpoint's HTTP server, when on
    metrics_port: int = 0
    feed: DecisionFeed | None = None
    idle: Callable[[], bool] = _no_admission  # True: no call of any method runs or waits
    failed_auth: FailedAuthAudit | None = None

    def stop(self, grace: float | None = 5.0, drain_s: float = 0.0) -> None:
        """Drain (health NOT_SERVING for `drain_s` while calls are still served, so load
        balancers move away), stop accepting calls, let in-flight ones finish within
        `grace`, interrupt any still stuck in the store, then persist and close."""
        self.health_state.update(draining=True)
        if drain_s > 0:
            time.sleep(drain_s)
        self.health.enter_graceful_shutdown()
        if self.feed is not None:  # watch streams end now, not at the end of the grace
            self.feed.close()
        self.server.stop(grace).wait()
        if self.failed_auth is not None:  # counts held for their minute, while the store is open
            self.failed_auth.close()
        self.runtime.interrupt_store()
        if self.metrics_http is not None:
            self.metrics_http.shutdown()
            self.metrics_http.server_close()
        if self.trimmer is not None:
            self.trimmer.stop()
        self.runtime.close()


def _credentials(config: Config) -> grpc.ServerCredentials | None:
    tls = config.tls
    if not tls.enabled:
        return None
    assert tls.cert is not None and tls.key is not None
    pair = [(tls.key.read_bytes(), tls.cert.read_bytes())]
    if tls.client_ca is not None:
        return grpc.ssl_server_credentials(
            pair, root_certificates=tls.client_ca.read_bytes(), require_client_auth=True
        )
    return grpc.ssl_server_credentials(pair)


def create_server(
    config: Config, runtime: Runtime | None = None, auth_window: FailureWindow | None = None
) -> RunningServer:
    """Build and start a server; port 0 picks a free port (see RunningServer.port).

    Models load in the background; health reports NOT_SERVING until they are ready.
    """
    limit_malloc_arenas(config.malloc_arena_max)  # before the handler threads allocate
    tracing.configure(config.trace_exporter)
    runtime = runtime or Runtime(config)
    metrics = Metrics()
    failed_auth = _failed_auth_audit(runtime, auth_window)
    admission = AdmissionInterceptor(
        config.max_in_flight,
        config.min_deadline_ms,
        config.max_queue,
        config.max_queue_wait_s,
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="rpc"),
        interceptors=[
            ObserveInterceptor(metrics),
            AuthInterceptor(config.api_keys, failed_auth.failed),
            admission,
            ErrorInterceptor(failed_auth.failed),
        ],
        options=[
            ("grpc.max_receive_message_length", config.max_receive_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=config.max_workers * 4,  # a backstop behind admission
    )
    identity_pb2_grpc.add_IdentityServiceServicer_to_server(IdentityServicer(runtime), server)
    recognition_pb2_grpc.add_RecognitionServiceServicer_to_server(
        RecognitionServicer(runtime), server
    )
    gate_pb2_grpc.add_GateServiceServicer_to_server(GateServicer(runtime), server)
    feed = DecisionFeed(
        lambda: runtime.engines.gallery.store, config.watch_max_streams, config.replica_poll_s
    )
    gate_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(runtime, metrics, feed), server)

    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    state = HealthState(health_servicer)
    state.update()  # NOT_SERVING until loaded

    def on_ready(ok: bool) -> None:
        state.update(loaded=ok)
        if not ok:
            return
        follower = runtime.engines.follower
        if follower is not None:
            # A replica behind the shared store must not answer 1:N: its load balancer moves
            # recognition and gate calls to another node (README "Several nodes").
            follower.on_change(lambda fresh: state.update(replica_fresh=fresh))
            state.update(replica_fresh=follower.fresh())
        gallery = runtime.engines.gallery
        store_health = getattr(getattr(gallery, "store", None), "health", None)
        if store_health is not None:
            # A full disk, or the database out of reach: the writing services step aside
            # until the store's probe finds it working again (README "Operations").
            store_health.on_change(lambda h: state.update(store_writable=h.writable))
            state.update(store_writable=store_health.writable)

    runtime.on_change(on_ready)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )

    address = f"{config.host}:{config.port}"
    creds = _credentials(config)
    try:
        port = (
            server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
        )
    except RuntimeError:  # grpcio raises on a port it cannot bind; older ones return 0
        port = 0
    if port == 0:
        server.stop(None)
        raise PortBusy(address, "port", "--port")
    # Both ports are bound before anything starts: a busy one stops the boot with nothing
    # to undo but the sockets.
    metrics_http, metrics_port = None, 0
    if config.metrics_port:
        registry = telemetry.server_registry(
            admission.queue_depths, lambda: _gallery_figures(runtime), _build(config)
        )
        try:
            metrics_http, metrics_port = telemetry.serve(
                config.metrics_host, config.metrics_port, registry, state.ready
            )
        except OSError:
            server.stop(None)
            raise PortBusy(
                f"{config.metrics_host}:{config.metrics_port}", "metrics_port", "--metrics-port"
            ) from None
    server.start()
    runtime.load_in_background()
    runtime.start_checkpoints()
    runtime.start_retention()
    runtime.every("failed-auth audit", failed_auth.window.window_s, failed_auth.flush)
    trimmer = None
    if config.idle_trim_s > 0:
        trimmer = IdleTrim(admission.idle, admission.activity, config.idle_trim_s).start()
    log.info(
        "listening",
        extra={
            "fields": {
                "address": f"{config.host}:{port}",
                "tls": config.tls.enabled,
                "metrics": f"{config.metrics_host}:{metrics_port}" if metrics_port else "off",
            }
        },
    )
    return RunningServer(
        server,
        port,
        runtime,
        health_servicer,
        metrics,
        state,
        trimmer,
        metrics_http,
        metrics_port,
        feed,
        admission.idle,
        failed_auth,
    )


def _failed_auth_audit(runtime: Runtime, window: FailureWindow | None) -> FailedAuthAudit:
    """Failed authentication goes to the store's audit, once per peer per minute (`window`:
    tests give one on their own clock)."""

    def write(actor: str, action: str, target: str, detail: dict[str, object]) -> None:
        runtime.store().audit(actor, action, target, detail)

    return FailedAuthAudit(write, window)


def _build(config: Config) -> telemetry.Build:
    try:
        entries = model_store.entries_for([config.profile], config.models_dir)
    except (OSError, ValueError):  # no manifest where the models are: the version alone
        entries = []
    models = tuple((e.name, e.sha256) for e in entries)
    return telemetry.Build(__version__, config.profile, models)


def _gallery_figures(runtime: Runtime) -> telemetry.GalleryFigures | None:
    if not runtime.wait(0) or runtime.engines.gallery is None:
        return None
    gallery, follower = runtime.engines.gallery, runtime.engines.follower
    lag = follower.lag() if follower is not None else None
    return telemetry.GalleryFigures(gallery.index.ntotal, gallery.store.count_identities(), lag)


def serve(config: Config) -> None:
    """Run until SIGTERM/SIGINT, then stop gracefully."""
    if not config.api_keys:
        log.warning("no API keys configured: every call except health will be refused")
    done = threading.Event()
    runtime = Runtime(config)

    def on_loaded(ok: bool) -> None:
        # Whatever failed to load stops the process: a template key that does not fit the
        # store (nothing was written), a database still unreachable after database_wait_s, a
        # model file missing or not the one the manifest pins.
        if not ok and isinstance(runtime.error, TemplateKeyError):
            log.error("template key refused: %s", runtime.error)
        if not ok:
            done.set()

    runtime.on_change(on_loaded)
    running = create_server(config, runtime)

    def handle(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping gracefully", signum)
        done.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    done.wait()
    error = runtime.error
    running.stop(grace=config.stop_grace_s, drain_s=0.0 if error else config.drain_s)
    log.info("stopped")
    if isinstance(error, TemplateKeyError | DatabaseUnreachable):
        raise SystemExit(2)
    if error is not None:
        raise LoadFailed(
            f"the node could not load its engines: {error} (models from {config.models_dir}, "
            f"profile {config.profile}; `recognizer models fetch` fetches and checks them)"
        )
