"""The JSON API under ``/api/v1/``: every route, who may call it, and what it answers.

=========================  =======  ================================================================
route                      scope    answer
=========================  =======  ================================================================
GET  /api/v1/status        read     the fleet snapshot (``fleet``), the clone's sync state, the queue
GET  /api/v1/history       read     deploy log entries (``?target=dc[/node[/service]]&limit=N``)
GET  /api/v1/plan          read     what ``deployer plan`` would change (``?target=``, repeatable)
POST /api/v1/deploy        deploy   ``{"image", "targets", "reason"}`` -> 202 ``{"job": ID, ...}``
POST /api/v1/rollback      deploy   ``{"targets"|"commit", "reason"}`` -> 202
POST /api/v1/locks         lock     ``{"target", "reason", "action": "acquire"|"release"}`` -> 202
GET  /api/v1/jobs          read     the latest jobs
GET  /api/v1/jobs/ID       read     one job: state, progress lines, result
GET  /api/v1/events        read     server-sent events (``?types=job,deploy``; ``Last-Event-ID``)
GET  /api/v1/openapi.json  read     this API as an OpenAPI 3.1 document (``openapi``)
POST /api/v1/hooks/NAME    HMAC     a CI webhook (``webhook``): deploys the hook's image, or releases a push
=========================  =======  ================================================================

Errors are one JSON line ``{"error": "..."}`` with the status: 400 malformed
or invalid body, 401 no or unknown token, 403 missing scope (or CSRF), 404, 409
replayed delivery, 413 body over the limit, 429 too many failed attempts.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from deployer.config import loader
from deployer.errors import ApiError, DeployerError
from deployer.ops import fleet as ops_fleet
from deployer.ops.deploy import Deployer
from deployer.serve import auth, validate
from deployer.serve.auth import Identity
from deployer.serve.events import KEEPALIVE, sse

KEEPALIVE_SECONDS = 15.0
FIRST_SNAPSHOT_WAIT = 60.0


def _state(request: Request):
    return request.app.state.serve


async def read_body(request: Request) -> bytes:
    """The body, at most the configured size (the app's body limit answers 413 past it)."""
    return await request.body()


async def read_json(request: Request) -> Any:
    return validate.decode_json(await read_body(request))


def _check_targets(state, targets: list[str], nodes_only: bool = False) -> None:
    try:
        infra = loader.load(state.root)
        for text in targets:
            resolved = infra.resolve(text)
            if nodes_only and resolved.service is not None:
                raise ApiError(400, f"target {text!r}: a lock is on a dc or a node, not a service")
    except DeployerError as exc:
        if isinstance(exc, ApiError):
            raise
        raise ApiError(400, exc.one_line()) from None


def _accepted(job) -> JSONResponse:
    return JSONResponse({"job": job.id, "state": job.state, "url": f"/api/v1/jobs/{job.id}"}, status_code=202)


# -- reading --------------------------------------------------------------------------


async def status(request: Request) -> JSONResponse:
    auth.require(request, "read")
    state = _state(request)
    snap = state.fleet.snapshot()
    if snap is None:
        snap = await run_in_threadpool(state.fleet.snapshot, FIRST_SNAPSHOT_WAIT)
    if snap is None:
        raise ApiError(503, "the first fleet status is not ready yet: try again")
    current = state.jobs.current
    return JSONResponse({**snap, "jobs": {"running": current.id if current else None,
                                          "queued": state.jobs._queue.qsize()}})


async def history(request: Request) -> JSONResponse:
    auth.require(request, "read")
    state = _state(request)
    target = request.query_params.get("target") or None
    limit = validate.limit_param(request.query_params.get("limit"))

    def read() -> list[dict]:
        try:
            entries = Deployer(state.root).history(target, limit)
        except DeployerError as exc:
            raise ApiError(400 if exc.exit_code == 3 else 500, exc.one_line()) from None
        return [{k: v for k, v in e.__dict__.items() if k != "trailers"} for e in entries]

    return JSONResponse({"target": target, "entries": await run_in_threadpool(read)})


async def plan(request: Request) -> JSONResponse:
    auth.require(request, "read")
    state = _state(request)
    targets = request.query_params.getlist("target") or None

    def compute() -> list[dict]:
        try:
            infra = loader.load(state.root)
            return [p.to_json() for p in ops_fleet.plan(state.root, infra, targets, False, 8)]
        except DeployerError as exc:
            raise ApiError(400 if exc.exit_code == 3 else 500, exc.one_line()) from None

    nodes = await run_in_threadpool(compute)
    pending = sum(1 for n in nodes for c in n["changes"] if c.get("action") not in (None, "none"))
    return JSONResponse({"targets": targets, "pending": pending, "nodes": nodes})


async def job(request: Request) -> JSONResponse:
    auth.require(request, "read")
    found = _state(request).jobs.get(request.path_params["job_id"])
    if found is None:
        raise ApiError(404, f"no job {request.path_params['job_id']!r} (jobs are kept in memory until a restart)")
    return JSONResponse(found.to_json())


async def jobs(request: Request) -> JSONResponse:
    auth.require(request, "read")
    limit = validate.limit_param(request.query_params.get("limit"))
    return JSONResponse({"jobs": [j.to_json() for j in reversed(_state(request).jobs.list(limit))]})


async def events(request: Request) -> StreamingResponse:
    auth.require(request, "read")
    state = _state(request)
    types = [t for t in (request.query_params.get("types") or "").split(",") if t] or None
    last = request.headers.get("last-event-id") or request.query_params.get("since")
    since = int(last) if last and last.isdigit() else None
    sub = state.broker.subscribe(types, since)

    async def stream():
        try:
            yield b"retry: 2000\n\n"
            while True:
                event = await sub.get(KEEPALIVE_SECONDS)
                if sub.lagged:
                    sub.lagged = False
                    yield sse({"type": "lagged", "t": 0, "id": "", "message": "events were dropped: reload"})
                yield KEEPALIVE if event is None else sse(event)
        except asyncio.CancelledError:
            raise
        finally:
            sub.close()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# -- changing -------------------------------------------------------------------------


async def _submit(request: Request, scope: str, kind: str, check, targets_of, nodes_only: bool = False) -> JSONResponse:
    """Queue a ``kind`` job: the token's ``scope``, the body checked by ``check``, its targets known."""
    identity = auth.require(request, scope)
    params = check(await read_json(request))
    state = _state(request)
    targets = targets_of(params)
    if targets:
        await run_in_threadpool(_check_targets, state, targets, nodes_only)
    reason = params.pop("reason")
    return _accepted(state.jobs.submit(kind, params, identity, reason))


async def deploy(request: Request) -> JSONResponse:
    return await _submit(request, "deploy", "deploy", validate.deploy_request, lambda p: p["targets"])


async def rollback(request: Request) -> JSONResponse:
    return await _submit(request, "deploy", "rollback", validate.rollback_request, lambda p: p.get("targets"))


async def locks(request: Request) -> JSONResponse:
    return await _submit(request, "lock", "lock", validate.lock_request, lambda p: [p["target"]], nodes_only=True)


async def openapi(request: Request) -> JSONResponse:
    auth.require(request, "read")
    from deployer import __version__
    from deployer.serve.openapi import document

    return JSONResponse(document(__version__))


async def hook(request: Request) -> JSONResponse:
    state = _state(request)
    auth._limited(state, request)
    body = await read_body(request)
    name = request.path_params["name"]
    try:
        receiver = state.hooks.accept(name, request.headers, body)
    except ApiError as exc:
        if exc.status == 401:
            state.limiter.failed(auth.client_key(request))
        raise
    payload = validate.decode_json(body) if body.strip() else {}
    if not isinstance(payload, dict):
        raise ApiError(400, "the body must be a JSON object")
    identity = Identity(f"hook:{name}", ("deploy",), "hook")
    if receiver.action == "release":  # a push payload: build its commit (webhook.Hook.release_for)
        decided = receiver.release_for(request.headers, payload)
        if isinstance(decided, str):
            return JSONResponse({"ignored": decided, "job": None}, status_code=202)
        params, reason = decided
        await run_in_threadpool(_check_targets, state, params["targets"])
        return _accepted(state.jobs.submit("release", params, identity, reason))
    image = receiver.image_for(payload)
    reason = payload.get("reason") if isinstance(payload.get("reason"), str) and payload["reason"].strip() else \
        f"webhook {name}: {image}"
    await run_in_threadpool(_check_targets, state, [receiver.target])
    job = state.jobs.submit("deploy", {"image": image, "targets": [receiver.target]}, identity, reason[:2000])
    return _accepted(job)


def routes(state: Any) -> list[Route]:
    return [
        Route("/api/v1/status", status, methods=["GET"], name="api:status"),
        Route("/api/v1/history", history, methods=["GET"], name="api:history"),
        Route("/api/v1/plan", plan, methods=["GET"], name="api:plan"),
        Route("/api/v1/deploy", deploy, methods=["POST"], name="api:deploy"),
        Route("/api/v1/rollback", rollback, methods=["POST"], name="api:rollback"),
        Route("/api/v1/locks", locks, methods=["POST"], name="api:locks"),
        Route("/api/v1/jobs", jobs, methods=["GET"], name="api:jobs"),
        Route("/api/v1/jobs/{job_id}", job, methods=["GET"], name="api:job"),
        Route("/api/v1/events", events, methods=["GET"], name="api:events"),
        Route("/api/v1/openapi.json", openapi, methods=["GET"], name="api:openapi"),
        Route("/api/v1/hooks/{name}", hook, methods=["POST"], name="api:hook"),
    ]
