"""Optional OpenTelemetry traces: a span per request and one per stage inside it.

The `tracing` extra (opentelemetry-api and -sdk) is optional. Without it, or with
`trace_exporter` empty (the default), spans go to the API's global provider, which does
nothing unless the process set one up (`opentelemetry-instrument`, say). With
`trace_exporter = "console"` the server installs the SDK with its console exporter.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from collections.abc import Iterator
from typing import Any

EXPORTERS = ("", "console")
_tracer: Any = None  # from the provider `install` gave, else the API's global one


@functools.cache
def available() -> bool:
    return importlib.util.find_spec("opentelemetry") is not None


def install(provider: Any) -> None:
    """Send this process's spans to `provider` (an SDK TracerProvider); None: the global."""
    global _tracer
    from opentelemetry import trace

    _tracer = trace.get_tracer("recognizer", tracer_provider=provider)


def configure(exporter: str) -> None:
    """The server's set-up from `trace_exporter`; raises RuntimeError when it needs the
    extra and the extra is not installed."""
    if not exporter:
        return
    if exporter not in EXPORTERS:
        raise RuntimeError(f"trace_exporter {exporter!r}: use one of {EXPORTERS}")
    if importlib.util.find_spec("opentelemetry.sdk") is None:
        raise RuntimeError(
            f"trace_exporter = {exporter!r} needs OpenTelemetry's SDK: "
            "pip install 'recognizer[tracing]'"
        )
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    install(provider)


@contextlib.contextmanager
def span(name: str, **attributes: str | int | float | bool) -> Iterator[None]:
    """A span around the block, a child of the current one; nothing without the API."""
    if not available():
        yield
        return
    if _tracer is None:
        install(None)
    with _tracer.start_as_current_span(name, attributes=attributes):
        yield
