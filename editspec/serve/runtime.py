"""What both servers share around their routes: readiness, `/healthz`, `/metrics`, running and draining.

A server is `loading` (the model or plugin is read in the background while the port already
answers `/healthz`), then `ready`; SIGTERM makes it `draining`: it stops accepting
connections, answers 503 to new requests on open ones, lets those in flight finish within
`shutdown_timeout` seconds, then exits 0.  A load that fails makes it `failed` and stops it.

>>> state = ServerState()
>>> state.status, state.accepting()
('loading', False)
>>> state.ready(); state.accepting()
True
"""
from __future__ import annotations

import signal
import threading
import time
from typing import Awaitable, Callable

from editspec.serve.http import ApiError


class ServerState:
    """Where a server is in its life; read by the guard, `/healthz` and `/metrics`."""

    def __init__(self, status: str = "loading"):
        self.status, self.detail, self.since = status, "", time.monotonic()
        self.in_flight: Callable[[], int] = lambda: 0        # set by the guard
        self.stop: Callable[[], None] = lambda: None         # set by `serve`

    def _become(self, status: str, detail: str = "") -> None:
        self.status, self.detail, self.since = status, detail, time.monotonic()

    def ready(self) -> None:
        self._become("ready")

    def drain(self) -> None:
        self._become("draining")

    def fail(self, detail: str) -> None:
        self._become("failed", detail)
        self.stop()

    def accepting(self) -> bool:
        return self.status == "ready"

    def refusal(self) -> ApiError:
        words = {"loading": "is still loading", "draining": "is shutting down", "failed": "failed to load"}
        return ApiError(f"the server {words.get(self.status, self.status)}"
                        + (f": {self.detail}" if self.detail else ""), status=503, kind="server_error",
                        code=f"server_{self.status}", headers={"Retry-After": "5" if self.status == "loading" else "1"})

    def run_loader(self, load: Callable[[], object], done: Callable[[object], None], describe=str) -> None:
        """Run `load()` in a thread; `done(result)` then `ready()`, or `fail(...)` on an error."""
        def work():
            try:
                done(load())
            except Exception as error:  # noqa: BLE001 - any load failure is reported and stops the server
                self.fail(describe(error))
            else:
                self.ready()

        threading.Thread(target=work, name="editspec-loader", daemon=True).start()


Probe = Callable[[], Awaitable[tuple[bool, dict]]]


def ops_routes(state: ServerState, metrics, describe: Callable[[], dict], probe: Probe | None = None):
    """`GET /healthz` (200 when ready and `probe` passes, else 503) and `GET /metrics` (Prometheus text)."""
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from editspec.serve.telemetry import CONTENT_TYPE

    async def healthz(request):
        body = {"status": state.status, **describe()}
        if state.detail:
            body["detail"] = state.detail
        healthy = state.accepting()
        if healthy and probe is not None:
            healthy, found = await probe()
            body.update(found)
            if not healthy:
                body["status"] = "upstream_unavailable"
        return JSONResponse(body, status_code=200 if healthy else 503)

    async def export(request):
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return [Route("/healthz", healthz, methods=["GET"]), Route("/metrics", export, methods=["GET"])]


def serve(app, listener, state: ServerState, shutdown_timeout: float, announce: Callable[[str], None]) -> None:
    """Serve `app` on the bound `listener` until SIGTERM or Ctrl-C, then drain (see the module doc)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            if not self.should_exit:
                state.drain()
                announce(f"stopping: finishing {state.in_flight()} request(s) in flight "
                         f"(at most {shutdown_timeout:g} s)")
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=shutdown_timeout)
    server = Server(config)
    state.stop = lambda: setattr(server, "should_exit", True)
    # uvicorn raises the signal again once it has drained; a no-op handler lets us exit 0 instead.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[listener])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
