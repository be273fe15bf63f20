"""The ASGI application of ``deployer serve``: routes, error answers, the body limit, the lifespan.

``create_app(state)`` builds a Starlette application over one
``state.ServeState``: the API (``api.routes``), then the pages
(``pages.routes``). Starlette and uvicorn were chosen because they are small,
well kept, and give what the service needs and no more: async handlers (one
process holds hundreds of event-stream clients), server-sent events as a
streaming response, and ``run_in_threadpool`` for the blocking operations.

Every error is one JSON line ``{"error": "..."}`` with its status (see
``api``); the body limit (``settings.max_body``) answers 413 from the
``Content-Length`` header or, for a chunked body, as soon as the bytes read
pass it. The lifespan starts the state's background parts (the job worker,
the fleet snapshots, the alerts watcher) and stops them.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from deployer.errors import ApiError, printable
from deployer.serve import api, pages


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"error": printable(" ".join(str(message).split()))}) + "\n"
    return Response(body, status_code=status, media_type="application/json", headers=headers)


class BodyLimit:
    """413 for a request body over ``limit`` bytes, before the handler sees more of it."""

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            status = 400 if not length.isdigit() else 413
            await error_response(status, "bad Content-Length" if status == 400 else
                                 f"the body is over {self.limit} bytes")(scope, receive, send)
            return
        total = 0

        async def limited() -> dict:
            nonlocal total
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > self.limit:
                    raise ApiError(413, f"the body is over {self.limit} bytes")
            return message

        await self.app(scope, limited, send)


async def _api_error(request: Request, exc: ApiError) -> Response:
    return error_response(exc.status, exc.message, exc.headers)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    return error_response(exc.status_code, exc.detail or "error", getattr(exc, "headers", None))


async def _crash(request: Request, exc: Exception) -> Response:
    return error_response(500, f"internal error: {type(exc).__name__}: {exc}")


def create_app(state: Any, *, start: bool = True) -> Starlette:
    """The application over ``state``; with ``start`` its lifespan starts and stops the background parts."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        if start:
            state.start()
        try:
            yield
        finally:
            if start:
                state.stop()

    if start:
        _add_alerts(state)
    app = Starlette(
        routes=[*api.routes(state), *pages.routes(state)],
        middleware=[Middleware(BodyLimit, limit=state.settings.max_body)],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _crash},
        lifespan=lifespan,
    )
    app.state.serve = state
    return app


def _add_alerts(state: Any) -> None:
    """The alerts watcher (``deployer.alerts``) as one of the state's services, unless ``--no-alerts``: its
    alert / drift / health events go to the broker, the broker's deploy / rollback / lock events to it (and,
    after each pull and each of serve's deploys, it reads the deploy log for what others pushed); it reads
    the state's one health watch (``live``) and follows the node locks (engine ones every
    ``--status-interval``). Several
    serve instances elect one sender (a Consul session lock); a bad alerts.yml stops the start, with its line."""
    from deployer.alerts.service import AlertService

    settings = state.settings
    if not getattr(settings, "alerts", False) or any(isinstance(s, AlertService) for s in state.services):
        return
    interval = settings.drift_interval
    state.add_service(AlertService(state.root, self_heal=settings.self_heal, drift=bool(interval and interval > 0),
                                   drift_interval=interval or None, health=settings.consul, leader=True,
                                   lock_interval=settings.status_interval))
