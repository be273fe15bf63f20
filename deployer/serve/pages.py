"""The dashboard's server-rendered pages (owned by serve-page; this is serve-core's placeholder).

``routes(state)`` returns the Starlette routes (and mounts, e.g. ``/static``) of
the pages; ``app.create_app`` adds them after the API's. Conventions the app
relies on: every page route calls ``auth.require(request, scope)`` (or
redirects to the sign-in page when it raises ApiError 401), every form checks
``auth.check_csrf(request, form["csrf"])``; a route that must answer without a
session (the sign-in page, static files) has a name starting with ``public:``,
which the every-route auth test skips.
"""

from __future__ import annotations

from typing import Any


def routes(state: Any) -> list:
    return []
