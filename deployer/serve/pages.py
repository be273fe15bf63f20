"""The dashboard: server-rendered pages over the service's state, updated live over server-sent events.

``routes(state)`` gives the page routes ``app.create_app`` mounts next to the API:

* ``GET/POST /login`` (paste a token: a session cookie from ``auth.sign_in``), ``POST /logout``;
* ``GET /``: the fleet, a table per datacenter (node, service, written and running image, commit,
  state, Consul health, lock, drift), and the activity feed;
* ``GET /services/{dc}/{node}/{service}``: its facts and git history, each older version with a
  "roll back to this version" link; ``GET/POST .../rollback?to=SHA``: the confirmation form (reason,
  a confirm box, the session's CSRF token) that queues a rollback job;
* ``GET /jobs/{id}``: a job's progress lines and result, streaming while it runs;
* ``GET /activity``: deploys, rollbacks, locks, alerts, drift and sync results;
* ``GET /fleet.json`` (the rows the fleet page shows, for its script) and ``GET /events`` (the
  broker's events as server-sent events, for a signed-in page);
* ``/static``: the page's script and style sheet (no data in them, so no sign-in).

``routes`` also adds ``live.HealthWake`` to the service's background parts: Consul's health
changes refresh the fleet snapshot at once instead of at the next ``--status-interval``.

Every page but /login needs a session (or a bearer token) with the ``read`` scope; without one a
page redirects to /login, a data route answers 401. Every POST needs the session's CSRF token and,
when the browser sends one, a same-host ``Origin`` (``auth.require``): 403 and nothing changes.
Templates are Jinja2 with autoescape on (every value from the catalog, labels or commit messages is
text), and the script writes cells with ``textContent`` only; a Content-Security-Policy without
inline script is the second fence.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from deployer.errors import ApiError, DeployerError
from deployer.serve import auth
from deployer.serve.events import KEEPALIVE
from deployer.serve.live import HealthWake
from deployer.serve.page_data import DeployLogCache, activity_items, fleet_view, job_view, service_history

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
SHA_RE = re.compile(r"^[0-9a-f]{40}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_REASON = 2000
STREAM_KEEPALIVE = 15.0
FEED_TYPES = ("deploy", "rollback", "lock", "alert", "drift", "sync")


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=False)
    env.globals["static"] = lambda name: f"/static/{name}"
    return env


class Pages:
    def __init__(self, state: Any):
        self.state = state
        self.env = environment()
        self.deploy_log = DeployLogCache()

    # --- rendering -----------------------------------------------------------------------------
    def render(self, request: Request, name: str, code: int = 200, **context: Any) -> HTMLResponse:
        session = getattr(request.state, "session", None)
        identity = getattr(request.state, "identity", None)
        base = {"page": name.removesuffix(".html"), "stream": None, "user": identity.name if identity else None,
                "scopes": identity.scopes if identity else (), "csrf": session.csrf if session else ""}
        base.update(context)
        html = self.env.get_template(name).render(**base)
        return HTMLResponse(html, status_code=code, headers=SECURITY_HEADERS)

    def error(self, request: Request, status: int, message: str) -> HTMLResponse:
        return self.render(request, "error.html", status, status=status, message=message)

    def who(self, request: Request, scope: str = "read", csrf_value: str | None = None) -> auth.Identity:
        identity = auth.require(request, scope, csrf_value)
        request.state.identity = identity
        return identity

    def page(self, handler):
        """A page handler. For a browser (``Accept: text/html``): 401 -> the sign-in page, another refusal ->
        an HTML error page; for any other client the one-line JSON error the API answers with."""
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                if not wants_html(request):
                    return json_error(exc)
                if exc.status == 401 and request.method in auth.SAFE_METHODS:
                    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                    return RedirectResponse(f"/login?next={quote(target, safe='/')}", 303,
                                            headers=SECURITY_HEADERS)
                response = self.error(request, exc.status, exc.message)
                for key, value in (exc.headers or {}).items():
                    response.headers[key] = value
                return response
            except DeployerError as exc:
                if not wants_html(request):
                    return json_error(ApiError(400, exc.one_line()))
                return self.error(request, 400, str(exc))
        endpoint.__name__ = handler.__name__
        return endpoint

    def data(self, handler):
        """A data handler: refusals as one-line JSON errors."""
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                return json_error(exc)
        endpoint.__name__ = handler.__name__
        return endpoint

    # --- sign in / out -------------------------------------------------------------------------
    async def login(self, request: Request) -> Response:
        next_url = _local_path(request.query_params.get("next", "/"))
        if request.method == "GET":
            return self.render(request, "login.html", next=next_url, error=None)
        if not auth.same_origin(request):
            raise ApiError(403, f"cross-origin sign-in refused (Origin {request.headers.get('origin')!r})")
        form = await request.form()
        next_url = _local_path(str(form.get("next") or "/"))
        try:
            session = auth.sign_in(request, str(form.get("token") or ""))
        except ApiError as exc:
            if exc.status != 401 or not wants_html(request):
                raise
            return self.render(request, "login.html", 401, next=next_url, error="That token is not valid.")
        response = RedirectResponse(next_url, 303, headers=SECURITY_HEADERS)
        auth.set_session_cookie(response, request, session)
        return response

    async def logout(self, request: Request) -> Response:
        form = await request.form()
        self.who(request, "read", str(form.get("csrf_token") or ""))
        response = RedirectResponse("/login", 303, headers=SECURITY_HEADERS)
        auth.sign_out(request, response)
        return response

    # --- the fleet -----------------------------------------------------------------------------
    async def fleet(self, request: Request) -> Response:
        self.who(request)
        view = await asyncio.to_thread(fleet_view, self.state)
        activity = await asyncio.to_thread(self.activity_items)
        return self.render(request, "fleet.html", stream="/events", activity=activity, **view)

    async def fleet_json(self, request: Request) -> Response:
        self.who(request)
        view = await asyncio.to_thread(fleet_view, self.state)
        rows = [row for dc in view["datacenters"] for row in dc["rows"]]
        return JSONResponse({"rows": rows, "sync_error": view["sync_error"],
                             "consul_errors": {dc["name"]: dc["consul_error"] for dc in view["datacenters"]
                                               if dc["consul_error"]}},
                            headers={"Cache-Control": "no-store"})

    def activity_items(self, limit: int = 30) -> list[dict]:
        return activity_items(self.state, FEED_TYPES, limit, self.deploy_log)

    async def activity(self, request: Request) -> Response:
        self.who(request)
        activity = await asyncio.to_thread(self.activity_items, 200)
        return self.render(request, "activity.html", stream="/events", activity=activity)

    # --- one service ---------------------------------------------------------------------------
    def _target(self, request: Request) -> tuple[str, str, str]:
        parts = tuple(request.path_params[k] for k in ("dc", "node", "service"))
        if not all(NAME_RE.match(p) for p in parts):
            raise ApiError(404, "no such service")
        return parts  # type: ignore[return-value]

    async def service(self, request: Request) -> Response:
        identity = self.who(request)
        dc, node, service = self._target(request)
        view = await asyncio.to_thread(service_history, self.state, dc, node, service)
        if view is None:
            raise ApiError(404, f"no service {dc}/{node}/{service} in the repository")
        return self.render(request, "service.html", stream="/events", dc=dc, node=node, service=service,
                           can_deploy=identity.allows("deploy"),
                           rollback_href=f"/services/{dc}/{node}/{service}/rollback", **view)

    async def rollback(self, request: Request) -> Response:
        if request.method == "GET":
            self.who(request, "deploy")
            wanted = request.query_params.get("to", "")
            reason = ""
        else:
            form = await request.form()
            self.who(request, "deploy", str(form.get("csrf_token") or ""))
            wanted = str(form.get("to") or "")
            reason = str(form.get("reason") or "").strip()
        dc, node, service = self._target(request)
        target = f"{dc}/{node}/{service}"
        view = await asyncio.to_thread(service_history, self.state, dc, node, service)
        if view is None:
            raise ApiError(404, f"no service {target} in the repository")
        version = next((v for v in view["versions"] if v["commit"] == wanted and SHA_RE.match(wanted)), None)
        if version is None:
            raise ApiError(400, f"commit {wanted[:12]!r} is not a version of {target} in the repository's history")
        if version["current"]:
            raise ApiError(400, f"{target} already runs {version['image']} (commit {version['short']})")
        context = dict(target=target, service_href=f"/services/{dc}/{node}/{service}",
                       action=f"/services/{dc}/{node}/{service}/rollback", current_image=view["row"]["image"],
                       image=version["image"], commit=version["commit"], short=version["short"],
                       subject=version["subject"], reason=reason, error=None)
        if request.method == "GET":
            return self.render(request, "rollback.html", **context)
        problem = None
        if not reason:
            problem = "Give a reason: it goes into the commit message."
        elif len(reason) > MAX_REASON:
            problem = f"The reason is longer than {MAX_REASON} characters."
        elif form.get("confirm") != "yes":
            problem = "Tick the box to confirm the rollback."
        if problem:
            context["error"] = problem
            return self.render(request, "rollback.html", 400, **context)
        identity = request.state.identity
        job = self.state.jobs.submit("rollback", {"targets": [target], "to": version["commit"]}, identity, reason)
        return RedirectResponse(f"/jobs/{job.id}", 303, headers=SECURITY_HEADERS)

    # --- jobs ----------------------------------------------------------------------------------
    async def job(self, request: Request) -> Response:
        self.who(request)
        job = self.state.jobs.get(request.path_params["id"])
        if job is None:
            raise ApiError(404, f"no job {request.path_params['id']!r}")
        view = job_view(job)
        back = next((t for t in view["target_list"] if t.count("/") == 2), None)
        return self.render(request, "job.html", stream="/events", job=view,
                           back=f"/services/{back}" if back else "/", back_label=back or "the fleet")

    # --- the event stream ----------------------------------------------------------------------
    async def events(self, request: Request) -> Response:
        self.who(request)
        last = request.headers.get("last-event-id")
        since = int(last) if last and last.isdigit() else None
        subscription = self.state.broker.subscribe(None, since)

        async def stream():
            try:
                yield b"retry: 1000\n\n"
                while True:
                    event = await subscription.get(STREAM_KEEPALIVE)
                    if await request.is_disconnected():
                        return
                    yield KEEPALIVE if event is None else _plain_sse(event)
            finally:
                subscription.close()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def _plain_sse(event: dict) -> bytes:
    """The event for EventSource.onmessage: ``id`` and one ``data`` line of JSON (no ``event:`` name)."""
    return f"id: {event.get('id', '')}\ndata: {json.dumps(event, separators=(',', ':'), default=str)}\n\n".encode()


def wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def json_error(exc: ApiError) -> JSONResponse:
    return JSONResponse({"error": " ".join(exc.message.split())}, exc.status, headers=exc.headers or None)


def _local_path(text: str) -> str:
    """Where to go after signing in: a path on this site only (never another host)."""
    parts = urlsplit(text or "/")
    if parts.scheme or parts.netloc or not (parts.path or "/").startswith("/") or text.startswith("//"):
        return "/"
    return text


def routes(state: Any) -> list:
    """The page routes over ``state``; also adds ``live.HealthWake`` to its background parts (Consul's
    health changes refresh the fleet snapshot at once, so the page sees a failing check within seconds)."""
    if not any(isinstance(s, HealthWake) for s in state.services):
        state.add_service(HealthWake())
    pages = Pages(state)
    page, data = pages.page, pages.data
    return [
        Route("/", page(pages.fleet), methods=["GET"]),
        Route("/login", page(pages.login), methods=["GET", "POST"], name="public:login"),
        Route("/logout", page(pages.logout), methods=["POST"]),
        Route("/activity", page(pages.activity), methods=["GET"]),
        Route("/services/{dc}/{node}/{service}", page(pages.service), methods=["GET"]),
        Route("/services/{dc}/{node}/{service}/rollback", page(pages.rollback), methods=["GET", "POST"]),
        Route("/jobs/{id}", page(pages.job), methods=["GET"]),
        Route("/fleet.json", data(pages.fleet_json), methods=["GET"]),
        Route("/events", data(pages.events), methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=str(STATIC)), name="public:static"),
    ]
