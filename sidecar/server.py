"""The sidecar's two HTTP listeners.

- local (``TASKCREDS_LISTEN_LOCAL``, default 127.0.0.1:9091): ``/healthz``, ``/readyz``,
  ``/metrics`` and ``POST /v1/redact``;
- probe (``TASKCREDS_LISTEN_PROBE``, default 0.0.0.0:9090, for kubelet probes and Prometheus):
  ``/healthz``, ``/readyz``, ``/metrics`` only. ``/v1/redact`` does not exist there (404).

``/v1/redact`` streams: the body is read chunk by chunk, redacted and written back as it goes, so
any size works in bounded memory. The body is treated as UTF-8; bytes that are not valid UTF-8
pass through unchanged (never a 400: a log with one bad byte must still come back redacted).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from taskcreds.sidecar.redact import Redactor

from taskcreds.metrics import SidecarMetrics

__all__ = ["Servers", "build_local_app", "build_probe_app", "start_servers", "Readiness"]

#: () -> (ready, details) — details are names only, never values
Readiness = Callable[[], tuple[bool, dict[str, Any]]]
_CHUNK = 64 * 1024


def _json(status: int, doc: dict[str, Any]) -> web.Response:
    return web.Response(status=status, text=json.dumps(doc), content_type="application/json")


def _common_routes(app: web.Application, readiness: Readiness, metrics: SidecarMetrics) -> None:
    async def healthz(_: web.Request) -> web.Response:
        return _json(200, {"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        ready, details = readiness()
        return _json(200 if ready else 503, {"status": "ready" if ready else "not ready", **details})

    async def metrics_handler(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)


def build_probe_app(readiness: Readiness, metrics: SidecarMetrics) -> web.Application:
    app = web.Application()
    _common_routes(app, readiness, metrics)
    return app


def build_local_app(readiness: Readiness, metrics: SidecarMetrics, redactor: Redactor) -> web.Application:
    app = web.Application()
    _common_routes(app, readiness, metrics)

    async def redact(request: web.Request) -> web.StreamResponse:
        stream = redactor.stream()
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/plain; charset=utf-8"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        async for chunk in request.content.iter_chunked(_CHUNK):
            out = stream.feed(chunk)
            if out:
                await response.write(out)
        await response.write(stream.finish())
        await response.write_eof()
        for name, count in stream.counts.items():
            metrics.redactions.labels(credential=name).inc(count)
        return response

    app.router.add_post("/v1/redact", redact)
    return app


@dataclass
class Servers:
    """Both listeners, running; ports are the bound ones (useful with port 0)."""

    local_port: int
    probe_port: int
    _runners: tuple[web.AppRunner, ...]

    async def close(self) -> None:
        for runner in self._runners:
            await runner.cleanup()


async def _serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    server = site._server  # the asyncio server: read back the bound port
    sockets = getattr(server, "sockets", None)  # asyncio.Server's (typed as AbstractServer)
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, int(bound)


async def start_servers(*, local: tuple[str, int], probe: tuple[str, int], readiness: Readiness,
                        metrics: SidecarMetrics, redactor: Redactor) -> Servers:
    """Start both listeners; OSError (address in use, ...) when one cannot bind."""
    local_runner, local_port = await _serve(build_local_app(readiness, metrics, redactor), *local)
    try:
        probe_runner, probe_port = await _serve(build_probe_app(readiness, metrics), *probe)
    except OSError:
        await local_runner.cleanup()
        raise
    return Servers(local_port, probe_port, (local_runner, probe_runner))
